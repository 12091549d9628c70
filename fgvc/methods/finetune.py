"""How a method's backbone trains (``model.finetune``), for every method alike.

- ``full``: every weight trains (the methods' papers).
- ``linear``: the backbone is frozen, weights and batch-norm statistics (it stays in eval mode): for the baseline a
  linear probe, for another method its own layers on a frozen backbone.
- ``lora``: the backbone is frozen and low-rank adapters are put into its layers through the peft library
  (``inject_adapter_in_model``; never hand-written LoRA): ``W x + (alpha / rank) B A x`` with ``B`` zero at the start,
  so a run starts from the pretrained function. The targets (``model.lora.targets``) are the backbone's linear
  layers (the attention and MLP of a transformer), or its convolutions where it has none (a CNN), or names.

The method's own layers (heads, part layers, attention maps) always train. Before a run is used for inference
(eval, predict, export, serve), :func:`merge_adapters` folds every adapter into its layer and puts the plain layer
back, so the model, and an export of it, has no dependency on peft and gives the run's outputs.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError

MODES = ("full", "linear", "lora")


def is_adapter(name: str) -> bool:
    """Whether a parameter name is one of peft's LoRA adapter weights (``...lora_A...``, ``...lora_B...``)."""
    return "lora_" in name


def lora_targets(backbone: nn.Module, targets: Any) -> list[str]:
    """The names (inside ``backbone``) of the layers that get adapters."""
    linear = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    if targets == "auto":
        return linear or convs
    if targets == "linear":
        return linear
    if targets == "conv":
        return convs
    names = [n for n, _ in backbone.named_modules() if n]
    chosen = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    return [n for n in chosen if isinstance(backbone.get_submodule(n), (nn.Linear, nn.Conv2d))]


def check_finetune(backbone: nn.Module, mode: str, lora: Any, backbone_name: str) -> None:
    """Refuses a fine-tuning mode that cannot apply, in one line.

    Raises:
        ConfigError: ``lora`` with no layer to adapt, or without peft.
    """
    if mode != "lora":
        return
    if not lora_targets(backbone, lora.targets):
        raise ConfigError(f"model.finetune=lora: {backbone_name} has no {lora.targets} layer to adapt "
                          f"(model.lora.targets={lora.targets})")
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("model.finetune=lora needs the peft library: pip install peft") from None


def apply_finetune(method: nn.Module, mode: str, lora: Any) -> None:
    """Freezes ``method.backbone`` for ``linear`` and ``lora`` and puts the adapters in for ``lora``; records the
    choice on the method (``method.finetune``) and in its notes."""
    method.finetune = mode
    if mode == "full":
        return
    backbone = method.backbone
    for p in backbone.parameters():
        p.requires_grad = False
    if mode == "linear":
        method.frozen_backbone = True
        backbone.eval()
        method.notes.append("model.finetune=linear: the backbone is frozen (weights and batch-norm statistics)")
        return
    from peft import LoraConfig, inject_adapter_in_model

    names = lora_targets(backbone, lora.targets)
    inject_adapter_in_model(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                       target_modules=names), backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad = is_adapter(name)
    adapters = sum(p.numel() for n, p in backbone.named_parameters() if is_adapter(n))
    method.notes.append(f"model.finetune=lora: the backbone is frozen, {len(names)} layers get rank-{lora.rank} "
                        f"adapters ({adapters / 1e6:.2f}M parameters)")


def merge_adapters(method: nn.Module) -> int:
    """Folds every LoRA adapter into its layer and puts the plain layer back (no peft class left); returns how
    many were merged (0 for a run without adapters)."""
    if getattr(method, "finetune", "full") != "lora":
        return 0
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(method.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(method.get_submodule(parent) if parent else method, child, module.get_base_layer())
            merged += 1
    method.finetune = "lora (merged)"
    return merged


__all__ = ["MODES", "is_adapter", "lora_targets", "check_finetune", "apply_finetune", "merge_adapters"]
