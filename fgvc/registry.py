"""One registry of methods and one factory: ``create_model(method, backbone=..., num_classes=...)``.

A method registers itself with :func:`register_method` (a class decorator); registering a name twice or
asking for an unknown one raises. The method's options dataclass (``Method.Config``) validates the
``method:`` section of a config, so the engine never needs to know any method by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from typing import TYPE_CHECKING, Any, Optional

from .config import RunConfig, from_dict, to_dict
from .errors import ConfigError

if TYPE_CHECKING:
    from .methods.base import Method

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: enrolls a :class:`~fgvc.methods.base.Method` subclass under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__name__} has no 'name'")
    if name in _METHODS:
        raise ValueError(f"method '{name}' is already registered (by {_METHODS[name].__qualname__})")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise ValueError(f"{cls.__name__}.Config must be a dataclass")
    _METHODS[name] = cls
    return cls


def _ensure_loaded() -> None:
    # Importing fgvc.methods registers the built-in methods. By name, so that the registry (which the
    # methods import to register themselves) has no import edge back to them.
    importlib.import_module("fgvc.methods")


def list_methods() -> list[str]:
    """Names of the registered methods."""
    _ensure_loaded()
    return sorted(_METHODS)


def get_method(name: str) -> type["Method"]:
    """The method class registered as ``name``.

    Raises:
        ConfigError: For an unknown name, with the closest registered names.
    """
    _ensure_loaded()
    if name not in _METHODS:
        near = difflib.get_close_matches(name, list(_METHODS), n=2)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise ConfigError(f"unknown method '{name}'{hint}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_config(name: str, options: Optional[dict[str, Any]] = None) -> Any:
    """Validates a method's options against its ``Config`` dataclass (keys reported as ``method.*``)."""
    return from_dict(get_method(name).Config, options or {}, prefix="method.")


def create_model(method: str, *, backbone: str, num_classes: int, img_size: int = 224, pretrained: bool = False,
                 pretrained_file: Optional[str] = None, backbone_args: Optional[dict[str, Any]] = None,
                 drop_path_rate: float = 0.0, head_init: str = "torch", **options: Any) -> "Method":
    """Builds a method around a timm backbone.

    Args:
        method: A registered method name (:func:`list_methods`).
        backbone: A timm model name.
        num_classes: Number of classes.
        img_size: Input resolution (position embeddings and token counts depend on it).
        pretrained: Load the backbone's pretrained weights from timm's sources.
        pretrained_file: Or from this local file (timm checkpoint, safetensors, Google ``.npz``).
        backbone_args: Extra keyword arguments for ``timm.create_model``.
        drop_path_rate: Stochastic depth of the backbone.
        head_init: Initialization of a new linear head (``torch`` or ``trunc_normal``).
        **options: The method's own options (fields of its ``Config``).

    Returns:
        The method module, in training mode.
    """
    from .methods.base import ModelSpec

    cls = get_method(method)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    cfg = method_config(method, options)
    spec = ModelSpec(backbone=backbone, num_classes=num_classes, img_size=img_size, pretrained=pretrained,
                     pretrained_file=pretrained_file, backbone_args=dict(backbone_args or {}),
                     drop_path_rate=drop_path_rate, head_init=head_init)
    cls.check_backbone(spec)
    return cls(spec, cfg)


def validate_config(cfg: RunConfig) -> None:
    """Catches configuration errors before any work: unknown method or option, unknown backbone, a
    backbone the method cannot use."""
    from .backbones import check_backbone_name
    from .methods.base import ModelSpec

    cls = get_method(cfg.model.method)
    method_config(cfg.model.method, cfg.method)
    check_backbone_name(cfg.model.backbone)
    cls.check_backbone(ModelSpec(backbone=cfg.model.backbone, num_classes=1, img_size=cfg.data.img_size,
                                 backbone_args=dict(cfg.model.backbone_args)))


def create_model_from_config(cfg: RunConfig, num_classes: int) -> "Method":
    """Builds the model a run config describes; fills ``cfg.method`` with the resolved options."""
    options = method_config(cfg.model.method, cfg.method)
    cfg.method = to_dict(options)
    return create_model(cfg.model.method, backbone=cfg.model.backbone, num_classes=num_classes,
                        img_size=cfg.data.img_size, pretrained=cfg.model.pretrained,
                        pretrained_file=cfg.model.pretrained_file, backbone_args=cfg.model.backbone_args,
                        drop_path_rate=cfg.model.drop_path_rate, head_init=cfg.model.head_init, **cfg.method)
