"""The factory: ``create_model(method, backbone=..., num_classes=...)`` and the same from a run's config.

Every way fgvc builds a method goes through here (training, a run loaded from its folder, benchmarks, the
Python API), after the checks that catch a wrong setting before any work starts.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from ..backbones import check_backbone_name, check_input_size
from ..config import LoraConfig, RunConfig, from_dict, to_dict
from ..errors import ConfigError
from .base import Method, ModelSpec
from .finetune import MODES, apply_finetune, check_finetune
from .registry import get_method, method_config


def create_model(method: str, *, backbone: str, num_classes: int, img_size: int = 224, pretrained: bool = False,
                 pretrained_file: Optional[str] = None, backbone_args: Optional[dict[str, Any]] = None,
                 drop_path_rate: float = 0.0, head_init: str = "torch", finetune: str = "full",
                 lora: Optional[Union[LoraConfig, dict[str, Any]]] = None, **options: Any) -> Method:
    """Builds a method around a timm backbone.

    Args:
        method: A registered method name (:func:`~fgvc.methods.registry.list_methods`).
        backbone: A timm model name.
        num_classes: Number of classes.
        img_size: Input resolution (position embeddings and token counts depend on it).
        pretrained: Load the backbone's pretrained weights from timm's sources.
        pretrained_file: Or from this local file (timm checkpoint, safetensors, Google ``.npz``).
        backbone_args: Extra keyword arguments for ``timm.create_model``.
        drop_path_rate: Stochastic depth of the backbone.
        head_init: Initialization of a new linear head (``torch`` or ``trunc_normal``).
        finetune: How the backbone trains: ``full``, ``linear`` (frozen) or ``lora`` (frozen, with adapters).
        lora: The adapters' settings for ``lora`` (:class:`~fgvc.config.LoraConfig` or its fields).
        **options: The method's own options (fields of its ``Config``).

    Returns:
        The method module, in training mode.
    """
    cls = get_method(method)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    check_input_size(backbone, img_size, **dict(backbone_args or {}))
    cfg = method_config(method, options)
    spec = ModelSpec(backbone=backbone, num_classes=num_classes, img_size=img_size, pretrained=pretrained,
                     pretrained_file=pretrained_file, backbone_args=dict(backbone_args or {}),
                     drop_path_rate=drop_path_rate, head_init=head_init)
    cls.check_backbone(spec)
    lora_cfg = lora if isinstance(lora, LoraConfig) else from_dict(LoraConfig, lora or {}, prefix="model.lora.")
    if finetune not in MODES:
        raise ConfigError(f"model.finetune: {finetune!r} is not one of {', '.join(MODES)}")
    if finetune == "lora":
        check_finetune(Method.probe_backbone(spec), finetune, lora_cfg, backbone)
    model = cls(spec, cfg)
    apply_finetune(model, finetune, lora_cfg)
    return model


def validate_config(cfg: RunConfig) -> None:
    """Catches configuration errors before any work: unknown method or option, unknown backbone, a
    backbone the method cannot use."""
    cls = get_method(cfg.model.method)
    method_config(cfg.model.method, cfg.method)
    check_backbone_name(cfg.model.backbone)
    check_input_size(cfg.model.backbone, cfg.data.img_size, **cfg.model.backbone_args)
    spec = ModelSpec(backbone=cfg.model.backbone, num_classes=1, img_size=cfg.data.img_size,
                     backbone_args=dict(cfg.model.backbone_args))
    cls.check_backbone(spec)
    if cfg.model.finetune == "lora":
        check_finetune(Method.probe_backbone(spec), cfg.model.finetune, cfg.model.lora, cfg.model.backbone)


def create_model_from_config(cfg: RunConfig, num_classes: int) -> Method:
    """Builds the model a run config describes; fills ``cfg.method`` with the resolved options."""
    options = method_config(cfg.model.method, cfg.method)
    cfg.method = to_dict(options)
    return create_model(cfg.model.method, backbone=cfg.model.backbone, num_classes=num_classes,
                        img_size=cfg.data.img_size, pretrained=cfg.model.pretrained,
                        pretrained_file=cfg.model.pretrained_file, backbone_args=cfg.model.backbone_args,
                        drop_path_rate=cfg.model.drop_path_rate, head_init=cfg.model.head_init,
                        finetune=cfg.model.finetune, lora=cfg.model.lora, **cfg.method)


__all__ = ["create_model", "validate_config", "create_model_from_config"]
