"""What a comparison trains: the runs (a method with its fine-tuning recipe, or a variant with settings of its
own), the budget they share and the ``fgvc train`` arguments of each; checked before anything starts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, FgvcError
from ..recipes import RECIPES, recipe_path

BASELINE = "baseline"
DEFAULT_IMG_SIZE = 448  # the papers' resolution, where --img-size is not given


@dataclass
class RunSpec:
    """One run of a comparison: a name, a method (its ``METHOD/finetune`` recipe) and settings of its own."""

    name: str
    method: str
    settings: list[str] = field(default_factory=list)


@dataclass
class Budget:
    """What every run of a comparison shares besides the data; None keeps the recipes' (or dataset file's)."""

    epochs: Optional[int] = None
    img_size: Optional[int] = None
    batch_size: Optional[int] = None
    classes: Optional[int] = None  # the first N classes only

    def settings(self) -> list[str]:
        """The budget as ``key=value`` settings (the resize before the crop is 8/7 of the size, as in training)."""
        items = []
        if self.epochs:
            items.append(f"train.epochs={self.epochs}")
        if self.img_size:
            items += [f"data.img_size={self.img_size}", f"data.resize={round(self.img_size * 8 / 7)}"]
        if self.batch_size:
            items.append(f"data.batch_size={self.batch_size}")
        if self.classes:
            items.append(f"data.max_classes={self.classes}")
        return items


@dataclass
class Comparison:
    """Everything ``fgvc compare`` was asked: the data, the backbone, the runs, the budget and where to write."""

    root: Optional[str]
    dataset: str  # a reader name (folder, csv, cub, cars, ...) or a dataset file of configs/datasets
    backbone: str
    runs: list[RunSpec]
    out: Path
    budget: Budget = field(default_factory=Budget)
    weights: Optional[str] = None  # a local weight file for the backbone (model.pretrained_file)
    device: str = "auto"
    parallel: int = 0  # runs at once; 0: one on a CPU, by memory on a GPU
    settings: list[str] = field(default_factory=list)  # key=value for every run
    title: str = ""


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
    except Exception:  # noqa: BLE001 - an unknown name is reported where the run builds its model
        return False


def finetune_recipe(method: str, backbone: Optional[str] = None) -> Path:
    """A method's fine-tuning recipe: ``METHOD/finetune_vit`` where the method has one and ``backbone`` is a plain
    ViT (the baseline: the CNN rates diverge there), else ``METHOD/finetune``."""
    vit = RECIPES / method / "finetune_vit.yaml"
    if backbone and vit.is_file() and plain_vit(backbone):
        return vit
    return recipe_path(method, "finetune")


def methods_for(backbone: str, img_size: int = 224) -> tuple[list[str], dict[str, str]]:
    """The methods that accept ``backbone`` (the baseline first) and, for the others, why not."""
    from ..methods import ModelSpec, get_method, list_methods

    accepted, refused = [], {}
    for name in sorted(list_methods(), key=lambda m: (m != BASELINE, m)):
        try:
            finetune_recipe(name)
            get_method(name).check_backbone(ModelSpec(backbone=backbone, num_classes=2, img_size=img_size))
            accepted.append(name)
        except ConfigError as e:
            refused[name] = str(e)
    return accepted, refused


def plan_runs(methods: Optional[str], variants: list[str], backbone: str,
              img_size: Optional[int]) -> tuple[list[RunSpec], list[str]]:
    """The runs of a comparison and the notes to print about them.

    Args:
        methods: Comma-separated method names, or None for every method that accepts ``backbone``.
        variants: ``'NAME=METHOD key=value ...'`` extra runs.
        backbone: The timm backbone every run shares.
        img_size: The input size (None: :data:`DEFAULT_IMG_SIZE`), for the methods whose acceptance depends on it.

    Raises:
        FgvcError: A malformed variant.
    """
    notes = []
    if methods:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        if BASELINE not in names:
            names.insert(0, BASELINE)
            notes.append("the baseline joins the comparison (every difference is taken against it)")
    else:
        names, refused = methods_for(backbone, img_size or DEFAULT_IMG_SIZE)
        notes += [f"{m} is left out: {why.removeprefix('model.backbone: ')}" for m, why in refused.items()]
    runs = [RunSpec(n, n) for n in names]
    for variant in variants:
        name, _, rest = variant.partition("=")
        words = rest.split()
        if not name or not words or any("=" not in w for w in words[1:]):
            raise FgvcError(f"--variant '{variant}': expected 'NAME=METHOD key=value ...'")
        runs.append(RunSpec(name.strip(), words[0], words[1:]))
    return runs, notes


def check_data(root: Optional[str], dataset: str) -> None:
    """Refuses a comparison without data before any run starts.

    Raises:
        FgvcError: No folder and no dataset file.
    """
    if root is None and not dataset_file(dataset):
        raise FgvcError("compare needs the dataset's folder (or a dataset file: --dataset cars196)")


def train_arguments(c: Comparison, run: RunSpec, workers: int) -> list[str]:
    """The ``fgvc train`` arguments of one run (recipe files, then key=value settings, later ones winning)."""
    preset = dataset_file(c.dataset)
    items = [str(finetune_recipe(run.method, c.backbone))]
    items += [str(preset)] if preset else [f"data.dataset={c.dataset}"]
    if c.root:
        items.append(f"data.root={Path(c.root).expanduser().resolve()}")
    items += [f"model.backbone={c.backbone}", "model.pretrained=true"]
    if c.weights:
        items.append(f"model.pretrained_file={Path(c.weights).expanduser().resolve()}")
    items += c.budget.settings() + [f"data.num_workers={workers}", f"device={c.device}"] + c.settings + run.settings
    return items


def slug(name: str) -> str:
    """A run's folder name: its name with every run of other characters than letters, digits, dots and dashes
    made one underscore."""
    return re.sub(r"[^\w.-]+", "_", name)


__all__ = ["BASELINE", "RunSpec", "Budget", "Comparison", "dataset_file", "plain_vit", "finetune_recipe",
           "methods_for", "plan_runs", "check_data", "train_arguments", "slug"]
