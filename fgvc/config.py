"""Typed configuration: dataclasses per component, YAML recipes and dotted command-line overrides.

A recipe is a YAML file whose top-level keys mirror :class:`RunConfig`. It may name a ``_base_`` file
(a path relative to itself) whose values it extends. Command-line arguments ``key=value`` override single
fields (``train.lr=0.01``, ``data.root=/data/CUB_200_2011``); values are parsed as YAML scalars.

Every value is checked against the type of its field before any work starts: an unknown key or a wrong
type raises :class:`~fgvc.errors.ConfigError` naming the dotted key. Method-specific options live in the
free-form ``method:`` mapping and are validated by the method's own dataclass (see
:func:`fgvc.methods.registry.method_config`), so this module knows nothing about any method.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError


@dataclass
class SyntheticConfig:
    """The built-in synthetic fine-grained dataset (see :mod:`fgvc.data.synthetic`)."""

    classes: int = 10
    train_per_class: int = 40
    test_per_class: int = 20
    size: int = 128
    seed: int = 0


@dataclass
class DataConfig:
    """Which dataset to read and how to turn its images into tensors."""

    dataset: str = "synthetic"
    root: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)  # reader keyword options (e.g. level: family)
    train_splits: Optional[list[str]] = None  # None: the reader's official training splits
    test_splits: Optional[list[str]] = None  # None: the reader's official test split
    val_fraction: float = 0.0  # >0 carves a seeded, stratified validation split out of train
    max_classes: Optional[int] = None  # keep only the first N classes (in label order) of every split
    img_size: int = 224  # the crop fed to the network (square)
    # the resize before the crop; None: round(img_size * 8 / 7). It follows img_size: a data.img_size set after
    # the file that set data.resize (a later config file, or the command line) without a resize of its own
    # drops that resize, so a new size never keeps another size's resize
    resize: Optional[int] = None
    resize_mode: Literal["square", "shorter"] = "square"  # square: (r, r), aspect not kept (the papers)
    # the resize's interpolation; auto: the backbone's pretrained configuration's (timm's; bicubic for most ViTs
    # and ImageNet CNNs), saved resolved in the run's config
    interpolation: Literal["auto", "bilinear", "bicubic", "nearest"] = "auto"
    crop_padding: int = 0  # zero padding on every side before the random crop (PMG's RandomCrop(448, padding=8))
    hflip: bool = True
    autoaugment: bool = False  # torchvision's ImageNet AutoAugment policy
    color_jitter: list[float] = field(default_factory=list)  # [brightness, contrast, saturation, hue]
    blur_p: float = 0.0  # RandomApply(GaussianBlur(5, sigma 0.1..5)) probability (PIM/HERBS)
    sharpness_p: float = 0.0  # RandomAdjustSharpness(1.5) probability (PIM/HERBS)
    mean: Optional[list[float]] = None  # None: the backbone's pretrained config
    std: Optional[list[float]] = None
    batch_size: int = 32  # per process
    eval_batch_size: int = 64
    num_workers: int = 4
    bad_data: Literal["raise", "skip"] = "raise"
    skip_budget: int = 100  # with bad_data=skip: stop the run after this many bad samples
    check_images: bool = False  # decode every image before training (fgvc data verify does it too)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class LoraConfig:
    """Low-rank adapters in the backbone (``model.finetune=lora``), through the peft library."""

    rank: int = 8
    alpha: float = 16.0  # the adapters' output is scaled by alpha / rank
    dropout: float = 0.0
    # auto: every linear layer of the backbone, or its convolutions (groups 1) where it has no linear layer;
    # linear; conv; or a list of module names (a name matches itself and any module whose name ends with it)
    targets: Union[Literal["auto", "linear", "conv"], list[str]] = "auto"


@dataclass
class ModelConfig:
    """The method and its timm backbone."""

    method: str = "baseline"
    backbone: str = "resnet50"
    pretrained: bool = False
    pretrained_file: Optional[str] = None  # a local weight file: timm checkpoint, safetensors or Google .npz
    backbone_args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model keyword args
    drop_path_rate: float = 0.0
    # the new classifier of baseline, TransFG and RAMS-Trans: PyTorch's Linear default, or as timm initializes a
    # new ViT head (truncated normal, std 0.02, zero bias)
    head_init: Literal["torch", "trunc_normal"] = "torch"
    # how the backbone trains: full (every weight), linear (frozen: a linear probe, or the method's own layers on a
    # frozen backbone), lora (frozen, with low-rank adapters in it: model.lora); the method's own layers always train
    finetune: Literal["full", "linear", "lora"] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision, checkpointing and logging."""

    epochs: int = 10
    steps: int = 0  # optimizer steps; >0 overrides epochs (TransFG and RAMS-Trans count steps)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01  # learning rate of the pretrained backbone
    head_lr_scale: float = 1.0  # new layers train at lr * head_lr_scale
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # step: x step_gamma every step_epochs epochs; exponential: the same decay, continuous (per update)
    schedule: Literal["cosine", "step", "exponential", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warm-up from 0, in optimizer steps
    warmup_fraction: float = 0.0  # with warmup_steps=0: the warm-up as a fraction of the run's steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak
    step_epochs: float = 30.0  # step/exponential schedules: multiply by step_gamma every step_epochs epochs
    step_gamma: float = 0.1
    grad_accum: int = 1
    clip_grad: Optional[float] = None  # global L2 norm
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, none on CPU
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step (forward and loss; backward through AOTAutograd)
    compile_options: dict[str, Any] = field(default_factory=dict)  # torch.compile keywords: mode, backend, ...
    ema_decay: float = 0.0  # 0 disables the EMA of the weights
    loss: Literal["ce", "smoothing", "gce"] = "ce"
    label_smoothing: float = 0.1
    gce_k: int = 15
    seed: int = 0
    log_every: int = 20
    eval_every: int = 1  # epochs between validation passes (0: only at the end)
    ckpt_every: int = 0  # steps between checkpoints (0: at the end of each epoch only)
    keep_checkpoints: int = 2  # step-N.pt files kept beside last.pt
    nonfinite: Literal["stop", "skip"] = "stop"
    nonfinite_budget: int = 10  # with nonfinite=skip: stop after this many skipped steps
    # after each epoch: a run whose loss rose in the first epoch (diverged) stops or warns; one that is not
    # falling, or sits near chance, warns (fgvc/engine/health.py)
    learning_check: Literal["stop", "warn", "ignore"] = "stop"
    select: Literal["last", "best_val"] = "last"  # which weights the final test uses
    tensorboard: bool = False
    find_unused_parameters: bool = False  # DDP
    record_sample_ids: bool = False  # append each step's sample indices (rank 0) to sample_ids.txt


@dataclass
class EvalConfig:
    """The evaluation report."""

    topk: int = 5
    confused_pairs: int = 10
    explain_samples: int = 8  # overlays written into report/explain after training (0: none)
    test: bool = True  # evaluate the test split once at the end (false: a tuning trial, judged on validation only)


@dataclass
class ReferenceConfig:
    """What a recipe reproduces: the paper's setting and number, kept beside the config."""

    paper: str = ""
    paper_top1: Optional[float] = None
    notes: str = ""


@dataclass
class RunConfig:
    """Everything one run needs; saved as ``config.yaml`` in the run folder."""

    name: str = "run"
    out: Optional[str] = None  # run folder; None: runs/<name>-<time>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: dict[str, Any] = field(default_factory=dict)  # validated by the method's own Config
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    # what `fgvc compare --tune` may change, dotted key -> {low, high, log} or {choices}: see fgvc/compare/space.py
    search: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Typed conversion


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert_value(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and returns it converted (lists, dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert_value(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `key=0.5` for a one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return [convert_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `5e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `name=2024` parses as an int
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - a programming error


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Builds the dataclass ``cls`` from a mapping, checking every key and type.

    Args:
        cls: A dataclass type.
        data: Values to set; missing fields keep their defaults.
        prefix: The dotted path of ``cls`` inside the whole config, for error messages.

    Raises:
        ConfigError: For an unknown key (with a suggestion) or a value of the wrong type.
    """
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in (data or {}).items():
        if key not in types_:
            hint = difflib.get_close_matches(str(key), list(types_), n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{suggestion}")
        kwargs[key] = convert_value(value, types_[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts and lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------------
# YAML files and overrides


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a recipe, following its ``_base_`` chain."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    base = data.pop("_base_", None)
    if base:
        data = _deep_merge(read_yaml(path.parent / base), data)
    return data


def _split_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not part for part in parts):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """Sets each dotted ``key=value`` in ``data`` (a copy); a mapping value replaces the old mapping."""
    out = _deep_merge(data, {})
    for item in items:
        parts, value = _split_override(item)
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                if child is not None:
                    raise ConfigError(f"override '{item}': '{part}' is not a section")
                child = {}
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turns ``["train.lr=0.1", "data.root=/x"]`` into a nested mapping."""
    return apply_overrides({}, items)


def load_config(path: str | Path | list | tuple | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Loads a recipe, applies overrides and validates everything.

    Args:
        path: A YAML recipe, or several merged in order (a method's recipe, then a dataset file such as
            ``datasets/cars196``: later files set what they name, mappings merge), or None for the defaults.
        overrides: ``key=value`` strings, applied last.
        base: A mapping applied before the overrides (the CLI's ``--method`` and ``--dataset`` flags).

    Returns:
        The validated :class:`RunConfig`.
    """
    paths = [] if path is None else list(path) if isinstance(path, (list, tuple)) else [path]
    layers = [read_yaml(p) for p in paths]
    data: dict[str, Any] = {}
    for layer in layers:
        data = _deep_merge(data, layer)
    if base:
        data = _deep_merge(data, base)
        layers.append(base)
    if overrides:
        data = apply_overrides(data, overrides)
        layers.append(parse_overrides(overrides))
    if _last_setting(layers, "img_size") > _last_setting(layers, "resize") >= 0:
        data["data"]["resize"] = None  # the resize belonged to an earlier size
    cfg = from_dict(RunConfig, data)
    check_ranges(cfg)
    return cfg


def _last_setting(layers: list[dict[str, Any]], key: str) -> int:
    """The position of the last layer that sets ``data.<key>`` (-1: none)."""
    found = [i for i, layer in enumerate(layers) if isinstance(layer.get("data"), dict) and key in layer["data"]]
    return found[-1] if found else -1


def _at_least(value: Any, low: float, key: str, what: str = "") -> None:
    if value is not None and value < low:
        raise ConfigError(f"{key}: must be at least {low:g}{what}, got {value!r}")


def _fraction(value: float, key: str, closed: bool = False) -> None:
    if not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0):
        raise ConfigError(f"{key}: must be in [0, 1{']' if closed else ')'}, got {value!r}")


def check_ranges(cfg: RunConfig) -> None:
    """Refuses values of the right type that no run can use (a negative epoch count, a zero batch, ...), each in
    one line naming the key, before any work starts.

    Raises:
        ConfigError: The first value out of its range.
    """
    d, t, e = cfg.data, cfg.train, cfg.eval
    if t.steps <= 0:
        _at_least(t.epochs, 1, "train.epochs", " (or set train.steps)")
    _at_least(t.steps, 0, "train.steps")
    if not t.lr > 0:
        raise ConfigError(f"train.lr: must be positive, got {t.lr!r}")
    for key in ("head_lr_scale", "weight_decay", "warmup_steps", "eval_every", "ckpt_every",
                "keep_checkpoints", "nonfinite_budget"):
        _at_least(getattr(t, key), 0, f"train.{key}")
    for key in ("grad_accum", "log_every", "gce_k"):
        _at_least(getattr(t, key), 1, f"train.{key}")
    for key in ("momentum", "warmup_fraction", "ema_decay", "label_smoothing"):
        _fraction(getattr(t, key), f"train.{key}")
    _fraction(t.min_lr_ratio, "train.min_lr_ratio", closed=True)
    if t.clip_grad is not None and not t.clip_grad > 0:
        raise ConfigError(f"train.clip_grad: must be positive (or null: no clipping), got {t.clip_grad!r}")
    if not (t.step_epochs > 0 and t.step_gamma > 0):
        raise ConfigError(f"train.step_epochs and train.step_gamma: must be positive, got {t.step_epochs!r}, "
                          f"{t.step_gamma!r}")
    _at_least(d.img_size, 8, "data.img_size")
    _at_least(d.resize, d.img_size, "data.resize", " (the crop data.img_size is taken from it)")
    _fraction(d.val_fraction, "data.val_fraction")
    _at_least(d.max_classes, 2, "data.max_classes", " (a classifier needs two classes)")
    for key in ("batch_size", "eval_batch_size"):
        _at_least(getattr(d, key), 1, f"data.{key}")
    for key in ("num_workers", "crop_padding", "skip_budget"):
        _at_least(getattr(d, key), 0, f"data.{key}")
    for key in ("blur_p", "sharpness_p"):
        _fraction(getattr(d, key), f"data.{key}", closed=True)
    if len(d.color_jitter) > 4:
        raise ConfigError(f"data.color_jitter: expected at most [brightness, contrast, saturation, hue], got "
                          f"{d.color_jitter}")
    for key in ("mean", "std"):
        value = getattr(d, key)
        if value is not None and len(value) != 3:
            raise ConfigError(f"data.{key}: expected three values (R, G, B), got {value}")
    s = d.synthetic
    _at_least(s.classes, 2, "data.synthetic.classes", " (a classifier needs two classes)")
    for key in ("train_per_class", "test_per_class"):
        _at_least(getattr(s, key), 1, f"data.synthetic.{key}")
    _at_least(s.size, 16, "data.synthetic.size")
    lora = cfg.model.lora
    _at_least(lora.rank, 1, "model.lora.rank")
    if not lora.alpha > 0:
        raise ConfigError(f"model.lora.alpha: must be positive, got {lora.alpha!r}")
    _fraction(lora.dropout, "model.lora.dropout")
    _at_least(e.topk, 1, "eval.topk")
    for key in ("confused_pairs", "explain_samples"):
        _at_least(getattr(e, key), 0, f"eval.{key}")


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Makes the paths a run stores (``data.root``, ``model.pretrained_file``, ``out``) absolute, so a run's
    ``config.yaml`` works from any folder (``fgvc eval RUN`` elsewhere). Returns ``cfg``, changed in place."""
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.model.pretrained_file:
        cfg.model.pretrained_file = str(Path(cfg.model.pretrained_file).expanduser().resolve())
    if cfg.out:
        cfg.out = str(Path(cfg.out).expanduser().resolve())
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Writes the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# Settings added after runs were saved without them, with the value those runs used: a saved config that lacks
# one is read with it, so an earlier run evaluates and resumes as it was trained.
LEGACY_VALUES = {("data", "interpolation"): "bilinear"}


def fill_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config (a copy) completed for today's fields: a setting it lacks reads as its run used it, the
    value of :data:`LEGACY_VALUES` or else today's default (which was then the only behaviour)."""
    defaults = to_dict(RunConfig())
    for (section, key), value in LEGACY_VALUES.items():
        defaults[section][key] = value
    defaults["method"] = {}  # a method's options are its own; the saved ones are resolved already
    return _deep_merge(defaults, data)


def config_from_saved(data: dict[str, Any]) -> RunConfig:
    """Rebuilds a :class:`RunConfig` from the dict stored in a checkpoint or ``config.yaml`` (an earlier run's
    missing settings read as it used them: :data:`LEGACY_VALUES`)."""
    cfg = from_dict(RunConfig, fill_legacy(data))
    check_ranges(cfg)
    return cfg
