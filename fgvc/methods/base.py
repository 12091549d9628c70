"""The method contract, and the helpers several methods share.

A method is an ``nn.Module`` with three faces:

- ``forward(images) -> logits``: the fixed inference rule, one call, no Python loop over the batch.
  Where the rule averages probabilities (WS-DAN, HERBS) ``forward`` returns their log, so that softmax
  of its output is the prediction.
- ``training_step(images, targets, ctx) -> StepOutput``: the training-time computation (extra passes,
  crops, suppression, auxiliary heads) and its loss. ``ctx.criterion`` is the classification loss the
  run chose (CE, label smoothing, GCE); methods use it wherever the paper uses CE.
- ``explain(images) -> Explanation``: what the method localizes, in input pixel coordinates.

The engine only ever calls these, plus the hooks below; it never branches on a method's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import create_backbone, mean_std


@dataclass
class ModelSpec:
    """What every method is built from, whatever its own options."""

    backbone: str
    num_classes: int
    img_size: int = 224
    pretrained: bool = False
    pretrained_file: Optional[str] = None
    backbone_args: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float = 0.0


@dataclass
class StepContext:
    """What a training step may need besides the batch."""

    step: int
    epoch: int
    total_steps: int
    total_epochs: int
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepOutput:
    """The result of one training step.

    Attributes:
        loss: The scalar to minimize.
        logs: Values to log (detached tensors or floats); averaged over the logging window.
        logits: Logits of the raw images, for the running training accuracy (optional).
    """

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)
    logits: Optional[torch.Tensor] = None


@dataclass
class Explanation:
    """What a method localizes for a batch, in the coordinates of its input images.

    Attributes:
        logits: The method's inference output for the batch.
        maps: Named heat maps ``[B, h, w]`` (any resolution; drawn stretched over the image).
        boxes: Named boxes ``[B, 4]`` (or sets of boxes ``[B, n, 4]``) as ``x0, y0, x1, y1`` in input pixels.
        points: Named point sets ``[B, n, 2]`` as ``x, y`` in input pixels (selected tokens, parts).
    """

    logits: torch.Tensor
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    boxes: dict[str, torch.Tensor] = field(default_factory=dict)
    points: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class NoOptions:
    """A method without options of its own."""


class Method(nn.Module):
    """Base class of every fgvc method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # citation and arXiv link
    code: ClassVar[str] = ""  # official code link (or "none")
    backbones: ClassVar[str] = "any timm model"  # what `fgvc methods` prints
    Config: ClassVar[type] = NoOptions

    def __init__(self, spec: ModelSpec, cfg: Any):
        super().__init__()
        self.spec = spec
        self.cfg = cfg
        self.num_classes = spec.num_classes

    # -- construction helpers -------------------------------------------------------------------------

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        """Raises :class:`~fgvc.errors.ConfigError` when the method cannot use ``spec.backbone``."""

    @classmethod
    def require_stage_features(cls, spec: ModelSpec) -> None:
        """The check of the methods built on multi-stage features (``feature_info``, ``forward_intermediates``)."""
        model = cls.probe_backbone(spec)
        if not hasattr(model, "feature_info") or not hasattr(model, "forward_intermediates"):
            from ..errors import ConfigError

            raise ConfigError(f"model.backbone: {cls.name} cannot use {spec.backbone}: it gives no multi-stage features")

    @staticmethod
    def probe_backbone(spec: ModelSpec, **kwargs: Any) -> nn.Module:
        """The backbone built on the meta device (no memory, no weights): for checks before any work."""
        with torch.device("meta"):
            return create_backbone(spec.backbone, img_size=spec.img_size, **{**spec.backbone_args, **kwargs})

    def make_backbone(self, **kwargs: Any) -> nn.Module:
        """The timm backbone of ``self.spec`` (pooled features, no classifier)."""
        s = self.spec
        return create_backbone(s.backbone, pretrained=s.pretrained, pretrained_file=s.pretrained_file,
                               img_size=s.img_size, drop_path_rate=s.drop_path_rate, **{**s.backbone_args, **kwargs})

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input normalization of the pretrained backbone."""
        return mean_std(self.backbone)

    # -- the three faces ----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        """Default: the classification loss of ``forward``."""
        logits = self(images)
        loss = ctx.criterion(logits, targets)
        return StepOutput(loss=loss, logs={"cls": loss.detach()}, logits=logits.detach())

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- hooks ----------------------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called by the engine at the start of every epoch (method schedules such as HERBS's T)."""

    def state_for_checkpoint(self) -> dict[str, Any]:
        """Method state that is not in ``state_dict`` (schedules, counters)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_for_checkpoint` returned."""

    def is_pretrained_parameter(self, name: str) -> bool:
        """Whether a parameter comes from the pretrained backbone (trained at the base LR)."""
        return name.startswith("backbone.")

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases (tokens, embeddings)."""
        backbone = getattr(self, "backbone", None)
        if backbone is not None and hasattr(backbone, "no_weight_decay"):
            return {f"backbone.{n}" for n in backbone.no_weight_decay()}
        return set()

    def param_groups(self, lr: float, head_lr_scale: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: pretrained vs new parameters, with no weight decay on norms, biases and tokens."""
        skip = self.no_weight_decay()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim > 1 and name not in skip
            groups.setdefault((self.is_pretrained_parameter(name), decay), []).append(p)
        out = []
        for (pretrained, decay), params in sorted(groups.items(), reverse=True):
            out.append({"params": params, "lr": lr if pretrained else lr * head_lr_scale,
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{'backbone' if pretrained else 'new'}{'' if decay else '_no_decay'}"})
        return out

    def options(self) -> dict[str, Any]:
        """The method's options as a dict (for reports)."""
        return dataclasses.asdict(self.cfg) if dataclasses.is_dataclass(self.cfg) else {}


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def class_activation_maps(feature_map: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM of one class per image: ``sum_c W[class, c] * F[b, c]`` -> ``[B, h, w]``."""
    return torch.einsum("bchw,bc->bhw", feature_map.float(), weight[classes].float())


def crop_and_zoom(images: torch.Tensor, boxes: torch.Tensor, size: Optional[tuple[int, int]] = None,
                  align_corners: bool = False) -> torch.Tensor:
    """Bilinear crop-and-resize of one box per image, batched (no Python loop).

    Args:
        images: ``[B, C, H, W]``.
        boxes: ``[B, 4]`` as ``x0, y0, x1, y1`` in pixels, edges included (pixel ``x1`` is in the crop).
        size: Output ``(h, w)``; the input size by default.
        align_corners: Sample like ``F.interpolate(..., align_corners=True)`` on the crop (RAMS-Trans's
            code); otherwise half-pixel centres.

    Returns:
        ``[B, C, h, w]``: each box stretched to the output size.
    """
    b, _, h, w = images.shape
    oh, ow = size or (h, w)
    boxes = boxes.to(images.dtype if images.is_floating_point() else torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    # The box as a range of pixel centres, in grid_sample's normalized coordinates (align_corners=True:
    # -1 and 1 are the centres of the first and last pixel).
    if align_corners:
        gx = torch.linspace(0, 1, ow, device=images.device, dtype=boxes.dtype)
        gy = torch.linspace(0, 1, oh, device=images.device, dtype=boxes.dtype)
        xs = x0[:, None] + (x1 - x0)[:, None] * gx
        ys = y0[:, None] + (y1 - y0)[:, None] * gy
    else:
        gx = (torch.arange(ow, device=images.device, dtype=boxes.dtype) + 0.5) / ow
        gy = (torch.arange(oh, device=images.device, dtype=boxes.dtype) + 0.5) / oh
        xs = (x0 - 0.5)[:, None] + (x1 - x0 + 1)[:, None] * gx
        ys = (y0 - 0.5)[:, None] + (y1 - y0 + 1)[:, None] * gy
    nx = xs / max(w - 1, 1) * 2 - 1
    ny = ys / max(h - 1, 1) * 2 - 1
    grid = torch.stack([nx[:, None, :].expand(b, oh, ow), ny[:, :, None].expand(b, oh, ow)], -1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` -> ``[B, H, W]`` bilinear."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected component of each binary map, batched on the device.

    Every pixel takes the smallest raster index of its component by repeated 3 x 3 min-pooling inside the
    mask; the most frequent label wins, ties going to the component that starts first in raster order
    (what ``skimage.measure.label`` + the largest ``regionprops`` area gives).

    Args:
        mask: ``[B, H, W]`` booleans.

    Returns:
        ``[B, H, W]`` booleans: only the largest component (all False where the mask is empty).
    """
    b, h, w = mask.shape
    big = float(h * w)
    index = torch.arange(h * w, device=mask.device, dtype=torch.float32).view(1, h, w).expand(b, h, w)
    labels = torch.where(mask, index, torch.full_like(index, big))
    for it in range(h * w):
        pooled = -F.max_pool2d(-labels[:, None], 3, stride=1, padding=1)[:, 0]
        new = torch.where(mask, pooled, labels)
        if it % 4 == 3 and torch.equal(new, labels):
            break
        labels = new
    flat = labels.view(b, -1).long()
    counts = torch.zeros(b, h * w + 1, device=mask.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    counts[:, -1] = 0  # the background label
    best = counts.argmax(1)
    return (labels == best.view(b, 1, 1).float()) & mask


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box ``[B, 4]`` as ``(col0, row0, col1, row1)`` (inclusive) of each map's True cells; the whole
    map where a map is empty."""
    b, h, w = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    r0 = torch.where(rows, ar_h, h).min(1).values
    r1 = torch.where(rows, ar_h, -1).max(1).values
    c0 = torch.where(cols, ar_w, w).min(1).values
    c1 = torch.where(cols, ar_w, -1).max(1).values
    empty = ~rows.any(1)
    box = torch.stack([c0, r0, c1, r1], 1)
    full = torch.tensor([0, 0, w - 1, h - 1], device=mask.device)
    return torch.where(empty[:, None], full, box)
