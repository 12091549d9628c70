"""The thin adapter between fgvc's methods and timm backbones.

Every backbone comes from timm; fgvc never vendors backbone code. This module creates them (random,
pretrained from timm's sources, or pretrained from a local file on an offline machine, Google ``.npz``
included), reads their normalization constants, turns their feature outputs into spatial maps and
gives multi-stage features. Methods touch backbones only through these functions and timm's contract
(``forward_features``, ``forward_head``, ``forward_intermediates``, ``feature_info``).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import timm
import torch
from torch import nn

from .errors import ConfigError, FgvcError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_backbone_name(name: str) -> None:
    """Raises :class:`ConfigError` for a name timm does not know, with the nearest names."""
    if timm.is_model(name):
        return
    base = name.split(".")[0]
    if timm.is_model(base):
        return
    near = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    raise ConfigError(f"model.backbone: '{name}' is not a timm model{hint}")


def create_backbone(name: str, *, pretrained: bool = False, pretrained_file: Optional[str] = None,
                    img_size: Optional[int] = None, drop_path_rate: float = 0.0, num_classes: int = 0,
                    **kwargs: Any) -> nn.Module:
    """Creates a timm model without its classifier (``num_classes=0``: pooled features).

    Args:
        name: A timm model name (``vit_base_patch16_224``, ``resnet50``, ``swin_large_patch4_window12_384``).
        pretrained: Load pretrained weights from timm's usual sources (needs the network or timm's cache).
        pretrained_file: Load pretrained weights from this local file instead: a timm/PyTorch checkpoint,
            a ``.safetensors`` file or a Google ViT ``.npz``. Implies ``pretrained``. The classifier is
            dropped and position embeddings are resized to ``img_size`` by timm's loaders.
        img_size: Input size, for the models whose shape depends on it (ViT, Swin); ignored by CNNs.
        drop_path_rate: Stochastic depth rate.
        num_classes: Classes of timm's own head; 0 removes it.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``embed_dim`` for a tiny test model).

    Raises:
        ConfigError: Unknown model or argument. FgvcError: weights that cannot be found or do not fit.
    """
    check_backbone_name(name)
    kw: dict[str, Any] = dict(kwargs)
    if drop_path_rate:
        kw["drop_path_rate"] = drop_path_rate
    if pretrained and not pretrained_file:
        pretrained_file = cached_hub_weights(name)  # None: timm downloads them (a connection was seen)
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise FgvcError(f"pretrained weight file not found: {path}")
        # custom_load: timm's Google/JAX loader (ViT family) for .npz; some timm versions set it in a ViT's own
        # pretrained config, which must not apply to a PyTorch or safetensors file
        overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
        kw["pretrained_cfg_overlay"] = overlay
        pretrained = True

    def make(with_size: bool) -> nn.Module:
        extra = {"img_size": img_size} if with_size and img_size else {}
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **extra, **kw)

    try:
        with _missing_key_check(name, pretrained_file if pretrained else None):
            try:
                model = make(with_size=True)
            except TypeError as e:
                if "img_size" not in str(e):
                    raise
                model = make(with_size=False)  # CNNs take any size and have no img_size argument
    except TypeError as e:
        raise ConfigError(f"model.backbone_args do not fit {name}: {e}") from None
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        if not pretrained:
            raise
        source = f"from {pretrained_file}" if pretrained_file else "from timm's sources"
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else e.__class__.__name__
        hint = "" if pretrained_file else " (offline? download them once, then pass model.pretrained_file=PATH)"
        raise FgvcError(f"cannot load pretrained weights for {name} {source}: {msg}{hint}") from None
    except Exception as e:  # network errors from huggingface_hub / urllib
        if pretrained and not pretrained_file:
            raise FgvcError(f"cannot fetch pretrained weights for {name}: {e.__class__.__name__}: "
                            f"{str(e)[:200]} (offline? pass model.pretrained_file=PATH)") from None
        raise
    return model


def _reachable(url: str, seconds: float = 4.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``seconds`` (name lookup included)."""
    import socket
    import threading
    from urllib.parse import urlparse

    u = urlparse(url)
    result = [False]

    def probe() -> None:
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
            socket.create_connection((u.hostname, port), timeout=seconds).close()
            result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(seconds)
    return result[0]


def cached_hub_weights(name: str) -> Optional[str]:
    """The local copy of a timm model's pretrained weights when timm's caches hold it; None when they must be
    downloaded and the hub answers.

    timm fetches weights from the Hugging Face hub (cached in ``~/.cache/huggingface/hub``) or, for a few,
    from a URL (cached in torch's hub folder). A cached file is used directly, so no request is made. With no
    cached file and no connection, this fails at once with one line instead of timm's retries.

    Raises:
        FgvcError: Not cached and the hub cannot be reached (or ``HF_HUB_OFFLINE`` is set).
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    source = None
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                      "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision or None)
            if isinstance(found, str):
                return found
        source, endpoint = f"the Hugging Face hub ({repo})", constants.ENDPOINT
        offline = constants.HF_HUB_OFFLINE
    elif url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if cached.is_file():
            return str(cached)
        source, endpoint, offline = url, url, False
    else:
        return None
    if offline or not _reachable(endpoint):
        raise FgvcError(f"cannot download the pretrained weights of {name} from {source}: "
                        f"{'HF_HUB_OFFLINE is set' if offline else 'no connection'}; download them once where there is "
                        "a network (timm caches them), or pass model.pretrained_file=PATH (a local weight file)")
    return None


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _missing_key_check(name: str, source: Optional[str]):
    """Fails when timm loads a weight file that leaves backbone parameters uninitialized.

    timm loads non-strictly once the classifier is dropped, so a file for another architecture would
    otherwise leave a silently random backbone.
    """
    if source is None:
        yield
        return
    logger = logging.getLogger("timm.models._builder")
    handler, level = _Capture(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    for msg in handler.messages:
        m = re.match(r"Missing keys \((.*)\) discovered", msg)
        if m:
            keys = [k.strip() for k in m.group(1).split(",")]
            raise FgvcError(f"cannot load pretrained weights for {name} from {source}: {len(keys)} backbone "
                            f"tensors are missing from the file (e.g. {', '.join(keys[:3])}); is it for another "
                            "architecture?")


_TAKES: dict[tuple[str, int, str], bool] = {}  # (model, size, its keyword arguments) -> whether it runs


def _takes(name: str, img_size: int, kwargs: dict[str, Any]) -> bool:
    """Whether the timm model runs on ``img_size`` inputs (a forward on the meta device: no memory, no weights);
    remembered per process."""
    key = (name, img_size, repr(sorted(kwargs.items())))
    if key not in _TAKES:
        try:
            with torch.no_grad(), torch.device("meta"):
                model = create_backbone(name, img_size=img_size, **kwargs).eval()
                model(torch.empty(1, 3, img_size, img_size))
            _TAKES[key] = True
        except (RuntimeError, ValueError, AssertionError):
            _TAKES[key] = False
    return _TAKES[key]


def _default_size(name: str) -> int:
    """The input size of the model's pretrained configuration (224 where it names none)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name.split(".")[0] if "." in name and not timm.is_model(name) else name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def check_input_size(name: str, img_size: int, **kwargs: Any) -> None:
    """Refuses, in one line naming the smallest size it takes, an input size too small for the backbone (a
    kernel larger than its feature map, a patch larger than the image).

    Raises:
        ConfigError: ``img_size`` too small (or not one integer).
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int):
        raise ConfigError(f"img_size: fgvc's models take square inputs, one integer (data.img_size), got {img_size!r}")
    if _takes(name, img_size, kwargs):
        return
    high = max(img_size, _default_size(name))
    if not _takes(name, high, kwargs):
        return  # not even at its own size: the meta device cannot run this model, so this check has no verdict
    low = img_size  # fails; high works: the smallest working size lies in (low, high]
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _takes(name, middle, kwargs) else (middle, high)
    raise ConfigError(f"data.img_size: {name} cannot take {img_size} px inputs (its feature maps would be smaller than "
                      f"its kernels or patches); the smallest size it takes is {high} px")


def mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalization the backbone's pretrained weights expect (ImageNet's when unknown)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def is_vit(model: nn.Module) -> bool:
    """A plain ViT (timm VisionTransformer layout): patch embedding, class token, blocks, norm."""
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "cls_token", "pos_embed")) and \
        getattr(model, "cls_token", None) is not None


def to_nchw(model: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Turns ``forward_features`` output into a spatial map ``[B, C, h, w]``.

    CNNs already give NCHW; Swin-like models give NHWC (``output_fmt``); ViTs give tokens, whose prefix
    tokens are dropped and the rest laid out on the patch grid.
    """
    if feats.ndim == 4:
        return feats.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else feats
    if feats.ndim == 3:
        prefix = getattr(model, "num_prefix_tokens", 0)
        tokens = feats[:, prefix:]
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        n = tokens.shape[1]
        h, w = grid if grid and grid[0] * grid[1] == n else (int(n ** 0.5), n // int(n ** 0.5))
        if h * w != n:
            raise ValueError(f"cannot lay {n} tokens out on a grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
    raise ValueError(f"unexpected feature shape {tuple(feats.shape)}")


def num_features(model: nn.Module) -> int:
    """Width of the pooled feature vector that the model gives without its classifier: timm's
    ``head_hidden_size`` where the model has a head layer before the classifier (MobileNetV3's ``conv_head``,
    EfficientViT's hidden head), else ``num_features`` (the channels of ``forward_features``)."""
    return int(getattr(model, "head_hidden_size", None) or getattr(model, "num_features"))


# ---------------------------------------------------------------------------------------------------
# Multi-stage features (WS-DAN, HERBS/PIM)


def stage_info(name: str, img_size: Optional[int] = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The stages a timm model offers (its ``feature_info``: module, reduction, channels), read on the meta
    device (no memory, no weights).

    Raises:
        ConfigError: When the model declares no stages.
    """
    with torch.device("meta"):
        model = create_backbone(name, img_size=img_size, **kwargs)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ConfigError(f"{name} gives no multi-stage features (no feature_info)")
    return [dict(f) for f in info]


def feature_index(info: Sequence[dict[str, Any]], layer: "int | str") -> int:
    """Position in ``info`` of a stage given by index (negative from the end) or module name
    (``Mixed_6e``, ``layer3``, ``layers.2``)."""
    names = [f["module"] for f in info]
    if isinstance(layer, str):
        if layer not in names:
            raise ConfigError(f"feature layer '{layer}' is not a stage of this backbone; its stages: {', '.join(names)}")
        return names.index(layer)
    if not -len(info) <= layer < len(info):
        raise ConfigError(f"feature layer {layer} is out of range: this backbone has {len(info)} stages ({', '.join(names)})")
    return layer % len(info)


def stage_at_stride(info: Sequence[dict[str, Any]], stride: int) -> int:
    """The stage whose reduction is closest to ``stride`` (the deepest one among equals)."""
    return min(range(len(info)), key=lambda i: (abs(math.log2(info[i]["reduction"] / stride)), -i))


class StageFeatures(nn.Module):
    """A timm backbone cut after the last stage a method needs; ``forward`` returns those stages as NCHW maps.

    Built on timm's ``forward_intermediates`` and ``prune_intermediate_layers`` where the model has them.
    Models that lack them in the installed timm (Inception-V3 before timm 1.0.31, for one) are built with
    timm's ``features_only`` wrapper instead, which also stops after the last requested stage.

    Attributes:
        model: The timm module (the pruned model, or timm's ``FeatureListNet``).
        indices: The stages returned, as positions in the full model's ``feature_info``.
        via: ``"intermediates"`` or ``"features_only"``.
    """

    def __init__(self, model: nn.Module, indices: Sequence[int], via: str):
        super().__init__()
        self.model = model
        self.indices = list(indices)
        self.via = via
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor, upto: Optional[int] = None) -> list[torch.Tensor]:
        """The stages' maps; with ``upto`` (a position in :attr:`indices`) only the first ``upto + 1`` of them,
        the layers after that stage left out where timm allows it."""
        indices = self.indices if upto is None else self.indices[: upto + 1]
        if self.via == "intermediates":
            return self.model.forward_intermediates(x, indices=indices, intermediates_only=True,
                                                    output_fmt="NCHW", stop_early=True)
        maps = list(self.model(x))[: len(indices)]
        return [m.permute(0, 3, 1, 2) for m in maps] if self.nhwc else maps


def create_stage_backbone(name: str, indices: Sequence[int], **kwargs: Any) -> StageFeatures:
    """A :class:`StageFeatures` of the timm model ``name`` returning the stages ``indices`` (non-negative
    ``feature_info`` positions, in increasing order); ``kwargs`` as for :func:`create_backbone`."""
    indices = sorted({int(i) for i in indices})
    shape_kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained", "pretrained_file")}
    with torch.device("meta"):
        probe = create_backbone(name, **shape_kwargs)
    if hasattr(probe, "forward_intermediates") and hasattr(probe, "prune_intermediate_layers"):
        model = create_backbone(name, **kwargs)
        model.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)
        return StageFeatures(model, indices, "intermediates")
    try:
        model = create_backbone(name, features_only=True, out_indices=tuple(indices), **kwargs)
    except (TypeError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"{name} gives no multi-stage features in timm {timm.__version__} "
                          f"({e.__class__.__name__}: {e})") from None
    return StageFeatures(model, indices, "features_only")


def remove_stage_stride(model: nn.Module, module: str) -> list[str]:
    """Sets every stride-2 convolution inside ``model.<module>`` (one stage) to stride 1, so that the stage keeps
    the resolution of its input, without dilation: CAL's ResNet-101, whose last stage runs at stride 16. The
    pretrained kernels are reused as they are. Returns the names of the convolutions changed (none: the stage
    does not downsample by convolutions of its own)."""
    changed = []
    for name, m in model.get_submodule(module).named_modules():
        if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2):
            m.stride = (1, 1)
            changed.append(f"{module}.{name}")
    return changed


def forward_flops(name: str, img_size: int, **kwargs: Any) -> float:
    """Forward FLOPs of the whole timm model for one image at ``img_size``, counted on the meta device (no
    memory, no weights): what a method's own layers are budgeted against (HERBS's pyramid, PMG's heads)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), torch.device("meta"):
        model = create_backbone(name, img_size=img_size, **kwargs).eval()  # batch norm of one 1x1 map in training
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, img_size, img_size))
    return float(counter.get_total_flops())

