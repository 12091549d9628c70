"""``fgvc bench-data``: the real-data benchmark on the project's shared data, a preset of ``fgvc compare``.

The shared data (``../shared/data`` beside the project) holds 17 Flowers and Stanford Cars-196 in class folders,
and ImageNet EfficientNet-Lite0 and ViT-Tiny/16 weights in timm's names. Each set is a list of runs on one
backbone; the sets of one backbone make one comparison (``OUT/DATASET-BACKBONE/index.html``, with its
``results.json`` and ``results.csv``), trained and analysed by :mod:`fgvc.compare` like any other:

- ``cnn``: baseline, DB + GCE, WS-DAN, CAL, PMG, PIM and HERBS on EfficientNet-Lite0, each with its
  ``METHOD/finetune`` recipe;
- ``vit``: the plain ViT-Tiny (``baseline/finetune_vit``: the ViT methods' optimizer), TransFG and RAMS-Trans;
- ``ablations``: the ViT methods in their official setting (dropout 0.1), then with one difference from it at a
  time (scales, part layer, patch stride, contrastive term, head initialization); the plain ViT's head init;
- ``lr``: the official learning rates of WS-DAN, CAL, PMG, PIM and HERBS instead of their finetune recipes'.

``--mode cpu`` trains the CNNs at 160 px and the ViTs at 224 px with short budgets (Cars-196: its first 30
classes) so that a whole set finishes on 2 cores; ``--mode gpu`` uses the dataset file's budget (448 px, every
class), several runs at once on one GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..compare import Budget, Comparison, RunSpec, run_comparison, table
from ..errors import FgvcError

LITE0 = "efficientnet_lite0_in1k.safetensors"
VIT_TINY = "vit_tiny_patch16_224_in1k.safetensors"
BACKBONES = {"lite0": ("efficientnet_lite0", LITE0), "vit_tiny": ("vit_tiny_patch16_224", VIT_TINY)}
DATASETS = ("flowers17", "cars196")

OFFICIAL_DROPOUT = ["method.embed_dropout=0.1", "method.mlp_dropout=0.1"]  # TransFG's and RAMS-Trans's codes
OFFICIAL_STEP = ["train.head_lr_scale=1", "train.nesterov=false", "train.warmup_fraction=0"]


def _runs(*specs: tuple) -> list[RunSpec]:
    """``(name, method[, settings])`` tuples as run specs."""
    return [RunSpec(name, method, list(rest[0]) if rest else []) for name, method, *rest in specs]


# set -> (backbone, runs)
SETS: dict[str, tuple[str, list[RunSpec]]] = {
    "cnn": ("lite0", _runs(*((m, m) for m in ("baseline", "dbgce", "wsdan", "cal", "pmg", "pim", "herbs")))),
    # the plain ViT's recipe is baseline/finetune_vit (compare picks it for a ViT): the ViT methods' optimizer, so
    # that a method's difference is not its optimizer's
    "vit": ("vit_tiny", _runs(("baseline", "baseline"), ("transfg", "transfg"), ("rams_trans", "rams_trans"))),
    "ablations": ("vit_tiny", _runs(
        ("vit head trunc_normal", "baseline", ["model.head_init=trunc_normal"]),
        ("transfg dropout 0.1", "transfg", OFFICIAL_DROPOUT),
        ("transfg dropout 0.1, part layer pretrained", "transfg", OFFICIAL_DROPOUT + ["method.part_layer_init=pretrained"]),
        ("transfg dropout 0.1, stride 16", "transfg", OFFICIAL_DROPOUT + ["method.slide_step=16"]),
        ("transfg dropout 0.1, no contrastive", "transfg", OFFICIAL_DROPOUT + ["method.contrastive_weight=0"]),
        ("transfg dropout 0.1, head trunc_normal", "transfg", OFFICIAL_DROPOUT + ["model.head_init=trunc_normal"]),
        ("rams_trans dropout 0.1", "rams_trans", OFFICIAL_DROPOUT),
        ("rams_trans dropout 0.1, 1 scale", "rams_trans", OFFICIAL_DROPOUT + ["method.scales=1"]),
        ("rams_trans 1 scale", "rams_trans", ["method.scales=1"]))),
    # the official optimizers, for the evidence behind the finetune recipes: every layer at the official rate
    "lr": ("lite0", _runs(
        ("wsdan official lr", "wsdan", ["train.lr=0.001", "train.schedule=step", "train.step_epochs=2",
                                        "train.step_gamma=0.9", *OFFICIAL_STEP]),
        ("cal official lr", "cal", ["train.lr=0.001", "train.schedule=exponential", "train.step_epochs=2",
                                    "train.step_gamma=0.9", *OFFICIAL_STEP]),
        ("pmg official lr", "pmg", ["train.lr=0.0002"]),
        ("pim official lr", "pim", ["train.lr=0.0005", "train.head_lr_scale=1", "train.clip_grad=null"]),
        ("herbs official lr", "herbs", ["train.lr=0.0005", "train.head_lr_scale=1", "train.clip_grad=null"]))),
}
# mode -> dataset -> (CNN size, ViT size, epochs, classes); None keeps the dataset file's. The ViT-Tiny runs stay at
# its own 224 px on the CPU: the questions about the ViT methods there are about learning, not resolution.
MODES: dict[str, dict[str, tuple[Optional[int], Optional[int], Optional[int], Optional[int]]]] = {
    "cpu": {"flowers17": (160, 224, 10, None), "cars196": (160, 224, 5, 30)},
    "gpu": {"flowers17": (448, 448, None, None), "cars196": (448, 448, None, None)},
}


def default_data() -> Optional[Path]:
    """``../shared/data`` beside the project checkout (or the working folder), where it exists."""
    for base in (Path(__file__).resolve().parents[2], Path.cwd()):
        p = base.parent / "shared" / "data"
        if (p / "flowers17").is_dir():
            return p
    return None


def comparisons(sets: list[str], dataset: str, root: Path, out: Path, mode: str, epochs: Optional[int],
                classes: Optional[int], parallel: int, device: str, only: Optional[list[str]] = None
                ) -> list[Comparison]:
    """One comparison per backbone of the sets asked (their runs in order, the baseline once)."""
    cnn_size, vit_size, mode_epochs, mode_classes = MODES[mode][dataset]
    grouped: dict[str, list[RunSpec]] = {}
    for s in sets:
        backbone, runs = SETS[s]
        group = grouped.setdefault(backbone, [])
        if not any(r.name == "baseline" for r in group):
            group.insert(0, RunSpec("baseline", "baseline"))
        group += [r for r in runs if r.name not in {g.name for g in group}]
    out_list = []
    for key, runs in grouped.items():
        if only:
            runs = [r for r in runs if r.name in only or r.name == "baseline"]
            if len(runs) == 1 and "baseline" not in only:
                continue
        name, weights = BACKBONES[key]
        size = vit_size if key == "vit_tiny" else cnn_size
        budget = Budget(epochs or mode_epochs, size, None, classes if classes is not None else mode_classes)
        title = (f"{'17 Flowers' if dataset == 'flowers17' else 'Stanford Cars-196'}, {name}, {mode.upper()} mode")
        out_list.append(Comparison(root=str(root / dataset), dataset=dataset, backbones=[name], runs=runs,
                                   out=out / f"{dataset}-{key}", budget=budget, weights={name: str(root / weights)},
                                   device=device, parallel=parallel, title=title))
    return out_list


def main(sets: list[str], data: Optional[str], out: str, mode: str, epochs: Optional[int], parallel: int,
         device: str, only: Optional[list[str]] = None, dataset: str = "flowers17",
         classes: Optional[int] = None) -> list[dict[str, Any]]:
    """Runs the sets' comparisons; returns their summaries (and prints each table)."""
    root = Path(data).resolve() if data else default_data()
    if root is None or not (root / "flowers17").is_dir():
        raise FgvcError("no shared data found: pass --data DIR (the folder holding flowers17/ and the weight files)")
    if dataset not in DATASETS:
        raise FgvcError(f"unknown dataset '{dataset}'; the shared sets: {', '.join(DATASETS)}")
    if not (root / dataset).is_dir():
        raise FgvcError(f"{root / dataset} not found")
    for f in (LITE0, VIT_TINY):
        if not (root / f).is_file():
            raise FgvcError(f"missing weight file {root / f}")
    bad = [s for s in sets if s not in SETS]
    if bad:
        raise FgvcError(f"unknown set(s) {bad}; the sets: {', '.join(SETS)}")
    known = {r.name for _, runs in SETS.values() for r in runs}
    unknown = [n for n in only or [] if n not in known]
    if unknown:
        raise FgvcError(f"unknown run(s) {unknown}; the runs: {', '.join(sorted(known))}")
    summaries = []
    for c in comparisons(sets, dataset, root, Path(out), mode, epochs, classes, parallel, device, only):
        summary = run_comparison(c, log=lambda m: print(m, flush=True))
        print(f"\n{c.title} ({c.out / 'index.html'})\n" + table(summary))
        summaries.append(summary)
    return summaries
