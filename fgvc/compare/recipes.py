"""Which recipe files a comparison's row trains with: the method's fine-tuning recipe (``METHOD/finetune``, or
``METHOD/finetune_vit`` on a plain ViT where the method has one) and a dataset file (``configs/datasets/NAME``)
where the dataset is named by one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..recipes import RECIPES, recipe_path


def dataset_file(name: str) -> Optional[Path]:
    """The dataset file ``configs/datasets/NAME.yaml`` where ``name`` is one (else None: a reader name)."""
    path = RECIPES / "datasets" / f"{name}.yaml"
    return path if path.is_file() else None


def plain_vit(backbone: str) -> bool:
    """Whether timm's ``backbone`` is a plain ViT (probed on the meta device: no memory, no weights)."""
    from ..backbones import is_vit
    from ..methods import Method, ModelSpec

    try:
        return is_vit(Method.probe_backbone(ModelSpec(backbone=backbone, num_classes=2)))
    except Exception:  # noqa: BLE001 - an unknown name is reported by the checks before any run
        return False


def finetune_recipe(method: str, backbone: Optional[str] = None) -> Path:
    """A method's fine-tuning recipe: ``METHOD/finetune_vit`` where the method has one and ``backbone`` is a plain
    ViT (the baseline: the CNN rates diverge there), else ``METHOD/finetune``."""
    vit = RECIPES / method / "finetune_vit.yaml"
    if backbone and vit.is_file() and plain_vit(backbone):
        return vit
    return recipe_path(method, "finetune")


__all__ = ["dataset_file", "plain_vit", "finetune_recipe"]
