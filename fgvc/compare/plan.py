"""What a comparison trains: its rows (a method or a variant, on a backbone, with a fine-tuning mode), the budget
they share, and the ``fgvc train`` arguments of each.

A row is named by its run (``cal``, ``wsdan official lr``) and its mode (``baseline lora``, ``baseline linear``);
its key, ``BACKBONE/NAME``, names its folders: ``OUT/runs/KEY`` (the run tested), ``OUT/trials/KEY/trial-N`` (its
tuning trials). Every difference is taken against the same backbone's ``baseline`` with full fine-tuning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, FgvcError
from .recipes import dataset_file, finetune_recipe

BASELINE = "baseline"
DEFAULT_IMG_SIZE = 448  # the papers' resolution, where --img-size is not given
MODES = ("full", "lora", "linear")


@dataclass
class RunSpec:
    """A run of a comparison: a name, a method (its ``METHOD/finetune`` recipe) and settings of its own."""

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
    """Everything ``fgvc compare`` was asked: the data, the backbones, the runs and modes, the budget, the tuning
    and where to write."""

    root: Optional[str]
    dataset: str  # a reader name (folder, csv, cub, cars, ...) or a dataset file of configs/datasets
    backbones: list[str]
    runs: list[RunSpec]
    out: Path
    budget: Budget = field(default_factory=Budget)
    weights: dict[str, str] = field(default_factory=dict)  # backbone -> a local weight file (model.pretrained_file)
    modes: list[str] = field(default_factory=lambda: ["full"])
    tune: int = 0  # trials per row (0: each row's recipe as it is)
    val_fraction: float = 0.2  # the validation split the trials are judged on, carved from the training set
    storage: Optional[str] = None  # Optuna storage shared by several machines; None: OUT/study.journal
    seed: int = 0  # of the samplers
    device: str = "auto"
    parallel: int = 0  # runs at once on this machine; 0: one on a CPU, by memory on a GPU
    launcher: list[str] = field(default_factory=list)  # e.g. torchrun --nproc_per_node=8: each run many processes
    settings: list[str] = field(default_factory=list)  # key=value for every run
    title: str = ""


@dataclass
class Row:
    """One line of the comparison: a run spec on a backbone with a fine-tuning mode, or why it does not apply."""

    backbone: str
    spec: RunSpec
    mode: str = "full"
    refused: str = ""  # why the method or the mode cannot use this backbone ('' when it applies)

    @property
    def name(self) -> str:
        return self.spec.name if self.mode == "full" else f"{self.spec.name} {self.mode}"

    @property
    def key(self) -> str:
        return f"{slug(self.backbone)}/{slug(self.name)}"

    @property
    def is_reference(self) -> bool:
        return self.spec.name == BASELINE and self.mode == "full" and not self.spec.settings

    def describe(self) -> str:
        """``cal lora on efficientnet_lite0``."""
        return f"{self.name} on {self.backbone}"


def methods_for(backbone: str, img_size: int = 224) -> tuple[list[str], dict[str, str]]:
    """The methods that accept ``backbone`` (the baseline first) and, for the others, why not."""
    from ..methods import list_methods

    accepted, refused = [], {}
    for name in sorted(list_methods(), key=lambda m: (m != BASELINE, m)):
        why = refusal(name, backbone, img_size)
        if why:
            refused[name] = why
        else:
            accepted.append(name)
    return accepted, refused


def refusal(method: str, backbone: str, img_size: int, mode: str = "full") -> str:
    """Why ``method`` with fine-tuning ``mode`` cannot use ``backbone`` ('' when it can), from the method's own
    checks on the meta device: no process is started to learn it."""
    from ..config import LoraConfig
    from ..methods import Method, ModelSpec, get_method
    from ..methods.finetune import check_finetune

    spec = ModelSpec(backbone=backbone, num_classes=2, img_size=img_size)
    try:
        finetune_recipe(method)
        get_method(method).check_backbone(spec)
        if mode == "lora":
            check_finetune(Method.probe_backbone(spec), mode, LoraConfig(), backbone)
    except ConfigError as e:
        return str(e).removeprefix("model.backbone: ")
    return ""


def plan_runs(methods: Optional[str], variants: list[str], backbones: list[str],
              img_size: Optional[int]) -> tuple[list[RunSpec], list[str]]:
    """The run specs of a comparison and the notes to print about them.

    Args:
        methods: Comma-separated method names, or None for every method that accepts one of ``backbones``.
        variants: ``'NAME=METHOD key=value ...'`` extra runs.
        backbones: The timm backbones of the comparison.
        img_size: The input size (None: :data:`DEFAULT_IMG_SIZE`), for the methods whose acceptance depends on it.

    Raises:
        FgvcError: A malformed variant or an unknown method.
    """
    from ..methods import get_method

    notes = []
    if methods:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        for name in names:
            get_method(name)  # an unknown name: one line, with the closest ones
        if BASELINE not in names:
            names.insert(0, BASELINE)
            notes.append("the baseline joins the comparison (every difference is taken against it)")
    else:
        names = []
        for backbone in backbones:
            accepted, refused = methods_for(backbone, img_size or DEFAULT_IMG_SIZE)
            names += [m for m in accepted if m not in names]
            notes += [f"{m} is left out on {backbone}: {why}" for m, why in refused.items()]
    runs = [RunSpec(n, n) for n in names]
    for variant in variants:
        name, _, rest = variant.partition("=")
        words = rest.split()
        if not name or not words or any("=" not in w for w in words[1:]):
            raise FgvcError(f"--variant '{variant}': expected 'NAME=METHOD key=value ...'")
        get_method(words[0])
        runs.append(RunSpec(name.strip(), words[0], words[1:]))
    return runs, notes


def parse_weights(text: Optional[str], backbones: list[str]) -> dict[str, str]:
    """``--weights``: ``FILE`` for a comparison of one backbone, or ``BACKBONE=FILE,...``.

    Raises:
        FgvcError: A bare file with several backbones.
    """
    weights = {}
    for item in [w.strip() for w in (text or "").split(",") if w.strip()]:
        if "=" in item:
            backbone, path = item.split("=", 1)
        elif len(backbones) == 1:
            backbone, path = backbones[0], item
        else:
            raise FgvcError(f"--weights {item}: with several backbones, name each one's file: BACKBONE=FILE,...")
        weights[backbone.strip()] = path.strip()
    return weights


def rows(c: Comparison) -> list[Row]:
    """Every (backbone, run, mode) of the comparison, in order, each marked with why it does not apply where it
    does not (a method that refuses the backbone, LoRA on a backbone without layers to adapt)."""
    size = c.budget.img_size or DEFAULT_IMG_SIZE
    out = []
    for backbone in c.backbones:
        for spec in c.runs:
            for mode in c.modes:
                out.append(Row(backbone, spec, mode, refusal(spec.method, backbone, size, mode)))
    return out


def train_arguments(c: Comparison, row: Row, workers: int) -> list[str]:
    """The ``fgvc train`` arguments of one row (recipe files, then key=value settings, later ones winning)."""
    preset = dataset_file(c.dataset)
    items = [str(finetune_recipe(row.spec.method, row.backbone))]
    items += [str(preset)] if preset else [f"data.dataset={c.dataset}"]
    if c.root:
        items.append(f"data.root={Path(c.root).expanduser().resolve()}")
    # a row that does not learn is reported with its accuracy and the warning, not stopped: a verdict needs it
    items += [f"model.backbone={row.backbone}", "model.pretrained=true", "train.learning_check=warn"]
    if c.weights.get(row.backbone):
        items.append(f"model.pretrained_file={Path(c.weights[row.backbone]).expanduser().resolve()}")
    if row.mode != "full":
        items.append(f"model.finetune={row.mode}")
    items += c.budget.settings() + [f"data.num_workers={workers}", f"device={c.device}"] + c.settings
    return items + row.spec.settings


def slug(name: str) -> str:
    """A folder name: every run of other characters than letters, digits, dots and dashes made one underscore."""
    return re.sub(r"[^\w.-]+", "_", name)


__all__ = ["BASELINE", "MODES", "RunSpec", "Budget", "Comparison", "Row", "methods_for", "refusal", "plan_runs",
           "parse_weights", "rows", "train_arguments", "slug"]
