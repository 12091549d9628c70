"""``fgvc bench-data``: the real-data benchmark on the project's shared data (17 Flowers; ImageNet
EfficientNet-Lite0 and ViT-Tiny/16 weights in timm's names; ../shared/data beside the project).

Every run is ``fgvc train`` of a packaged ``METHOD/flowers17`` recipe (adapted to the backbone; each recipe
says how) in its own process, with the data and weight files filled in:

- ``cnn``: baseline, DB + GCE, WS-DAN, PIM and HERBS on EfficientNet-Lite0;
- ``vit``: plain ViT-Tiny fine-tuning, TransFG and RAMS-Trans;
- ``ablations``: the ViT methods in their official setting (dropout 0.1), then with one difference from it at a
  time (scales, part layer, patch stride, contrastive term, head initialization); the plain ViT's head init;
- ``lr``: PIM and HERBS with their official learning rate instead of their flowers17 recipes' fine-tuning rate.

``--mode cpu`` trains at 160 px (CNNs) and 224 px (ViTs) with short budgets (the CNN set within an hour on 2
cores); ``--mode gpu`` the CNNs at 448 px and the ViTs at 224 px with the recipes' budgets, several runs at
once on one GPU. Results are
appended to ``OUT/results.jsonl`` as each run ends (a rerun skips what is there) and summarized in
``OUT/table.md``: method, test top-1, mean per-class accuracy, training images/s, minutes; ``OUT/curves_*.png``
plots the runs' training curves side by side, one figure per backbone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .errors import FgvcError

LITE0 = "efficientnet_lite0_in1k.safetensors"
VIT_TINY = "vit_tiny_patch16_224_in1k.safetensors"

OFFICIAL_DROPOUT = ["method.embed_dropout=0.1", "method.mlp_dropout=0.1"]  # TransFG's and RAMS-Trans's codes

# name -> (recipe, weight file, extra settings)
RUNS: dict[str, tuple[str, str, list[str]]] = {
    "baseline": ("baseline/flowers17", LITE0, []),
    "dbgce": ("dbgce/flowers17", LITE0, []),
    "wsdan": ("wsdan/flowers17", LITE0, []),
    "pim": ("pim/flowers17", LITE0, []),
    "herbs": ("herbs/flowers17", LITE0, []),
    "vit": ("baseline/flowers17_vit", VIT_TINY, []),
    "transfg": ("transfg/flowers17", VIT_TINY, []),
    "rams_trans": ("rams_trans/flowers17", VIT_TINY, []),
    # the ablations: the ViT methods in the official setting (dropout 0.1), one difference from it at a time;
    # the flowers17 recipes differ from it in the dropout alone (0)
    "vit head trunc_normal": ("baseline/flowers17_vit", VIT_TINY, ["model.head_init=trunc_normal"]),
    "transfg dropout 0.1": ("transfg/flowers17", VIT_TINY, OFFICIAL_DROPOUT),
    "transfg dropout 0.1, part layer pretrained": ("transfg/flowers17", VIT_TINY,
                                                   OFFICIAL_DROPOUT + ["method.part_layer_init=pretrained"]),
    "transfg dropout 0.1, stride 16": ("transfg/flowers17", VIT_TINY, OFFICIAL_DROPOUT + ["method.slide_step=16"]),
    "transfg dropout 0.1, no contrastive": ("transfg/flowers17", VIT_TINY,
                                            OFFICIAL_DROPOUT + ["method.contrastive_weight=0"]),
    "transfg dropout 0.1, head trunc_normal": ("transfg/flowers17", VIT_TINY,
                                               OFFICIAL_DROPOUT + ["model.head_init=trunc_normal"]),
    "rams_trans dropout 0.1": ("rams_trans/flowers17", VIT_TINY, OFFICIAL_DROPOUT),
    "rams_trans dropout 0.1, 1 scale": ("rams_trans/flowers17", VIT_TINY, OFFICIAL_DROPOUT + ["method.scales=1"]),
    "rams_trans 1 scale": ("rams_trans/flowers17", VIT_TINY, ["method.scales=1"]),
    # PIM and HERBS with their official rate (5e-4 for every layer, no clipping) instead of their flowers17
    # recipes' fine-tuning rate: the official rate suits the official 18,700 (PIM) and 60,000 (HERBS) CUB steps
    # from Swin-L, not a few hundred from Lite0
    "pim official lr": ("pim/flowers17", LITE0, ["train.lr=0.0005", "train.head_lr_scale=1", "train.clip_grad=null"]),
    "herbs official lr": ("herbs/flowers17", LITE0, ["train.lr=0.0005", "train.head_lr_scale=1",
                                                     "train.clip_grad=null"]),
}
SETS = {"cnn": ["baseline", "dbgce", "wsdan", "pim", "herbs"], "vit": ["vit", "transfg", "rams_trans"],
        "ablations": [n for n in RUNS if " " in n and RUNS[n][1] == VIT_TINY],
        "lr": ["pim official lr", "herbs official lr"]}
# mode -> (CNN size, ViT size, CNN epochs, ViT epochs); None keeps the recipe's budget. The ViT-Tiny runs stay at
# its own 224 px: the questions about the ViT methods are about learning, not resolution.
MODES = {"cpu": (160, 224, 10, 5), "gpu": (448, 224, None, None)}


def slug(name: str) -> str:
    """A run's folder and log name: its name with every run of other characters than letters, digits, dots
    and dashes made one underscore."""
    return re.sub(r"[^\w.-]+", "_", name)


def default_data() -> Optional[Path]:
    """``../shared/data`` beside the project checkout (or the working folder), where it exists."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        p = base.parent / "shared" / "data"
        if (p / "flowers17").is_dir():
            return p
    return None


def settings(name: str, data: Path, mode: str, epochs: Optional[int], workers: int, device: str) -> list[str]:
    recipe, weights, extra = RUNS[name]
    cnn_size, vit_size, cnn_epochs, vit_epochs = MODES[mode]
    vit = weights == VIT_TINY
    size = vit_size if vit else cnn_size
    items = [recipe, f"data.root={data / 'flowers17'}", f"model.pretrained_file={data / weights}",
             f"data.img_size={size}", f"data.resize={round(size * 8 / 7)}", f"data.num_workers={workers}",
             f"device={device}"]
    budget = epochs or (vit_epochs if vit else cnn_epochs)
    if budget:
        items.append(f"train.epochs={budget}")
    return items + extra


def summarize(run_dir: Path) -> dict[str, Any]:
    """Training figures of a finished run from its metrics.jsonl."""
    from .engine.runlog import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    out: dict[str, Any] = {}
    if train:
        out["img_per_s"] = sum(r["img_per_s"] for r in train[1:] or train) / len(train[1:] or train)
        out["first_loss"], out["last_loss"] = train[0]["loss"], train[-1]["loss"]
        for step in (40, 80):
            at = [r for r in train if r["step"] <= step]
            if at and "train_acc" in at[-1]:
                out[f"train_acc_step{step}"] = at[-1]["train_acc"]
    out["warnings"] = [r["message"] for r in records if r.get("kind") == "warning"]
    return out


def run_all(names: list[str], data: Path, out: Path, mode: str = "cpu", epochs: Optional[int] = None,
            parallel: int = 1, device: str = "auto", log=print) -> list[dict[str, Any]]:
    """Trains every named run (``parallel`` at a time), appending each result to ``out/results.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            r = json.loads(line)
            done[r["name"]] = r
    todo = [n for n in names if n not in done]
    workers = max(1, min(8, (os.cpu_count() or 2) // max(parallel, 1)))
    running: list[tuple[str, subprocess.Popen, float, Any]] = []
    while todo or running:
        while todo and len(running) < parallel:
            name = todo.pop(0)
            run_dir = out / "runs" / slug(name)
            cmd = [sys.executable, "-m", "fgvc", "train", *settings(name, data, mode, epochs, workers, device),
                   f"out={run_dir}", "--quiet", "--json", "--resume", "auto"]
            log_fh = open(out / f"{slug(name)}.log", "w")
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // parallel))}
            running.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_fh, text=True, env=env),
                            time.time(), log_fh))
            log(f"started {name}: {' '.join(cmd[3:])}")
        time.sleep(1)
        for item in list(running):
            name, proc, t0, log_fh = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log_fh.close()
            stdout = proc.stdout.read()
            minutes = (time.time() - t0) / 60
            result: dict[str, Any] = {"name": name, "mode": mode, "exit": proc.returncode, "minutes": minutes,
                                      "settings": settings(name, data, mode, epochs, workers, device)}
            lines = [x for x in stdout.splitlines() if x.startswith("{")]
            if proc.returncode == 0 and lines:
                test = json.loads(lines[-1])
                result.update(top1=test["top1"], mean_class_acc=test["mean_class_acc"])
            else:
                result["error"] = (out / f"{slug(name)}.log").read_text().strip().splitlines()[-1:]
            result.update(summarize(out / "runs" / slug(name)))
            with open(results_file, "a") as fh:
                fh.write(json.dumps(result) + "\n")
            done[name] = result
            verdict = f"top-1 {result['top1']:.2f}%" if "top1" in result else f"failed {result['error']}"
            log(f"finished {name}: {verdict} in {minutes:.1f} min")
    rows = [done[n] for n in names if n in done]
    (out / "table.md").write_text(table(rows))
    plot_curves([r["name"] for r in rows], out)
    return rows


def plot_curves(names: list[str], out: Path) -> list[Path]:
    """``OUT/curves_<backbone>.png``: the runs on one backbone side by side (loss and training accuracy)."""
    from .engine.runlog import read_metrics
    from .report import plot_run_comparison

    written = []
    for weights, label in ((LITE0, "lite0"), (VIT_TINY, "vit_tiny")):
        group = {n: read_metrics(out / "runs" / slug(n)) for n in names if RUNS[n][1] == weights}
        path = out / f"curves_{label}.png"
        if group and plot_run_comparison(group, path, f"17 Flowers, {label}: training curves",
                                         reference=("baseline", "vit")):
            written.append(path)
    return written


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | test top-1 | mean per class | train images/s | minutes | train acc. at step 40 / 80 | "
             "last train loss |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = " / ".join(f"{r[k]:.1f}%" if k in r else "-" for k in ("train_acc_step40", "train_acc_step80"))
        top = f"{r['top1']:.2f}%" if "top1" in r else "failed"
        mca = f"{r['mean_class_acc']:.2f}%" if "mean_class_acc" in r else "-"
        loss = f"{r['last_loss']:.3f}" if "last_loss" in r else "-"
        lines.append(f"| {r['name']} | {top} | {mca} | {r.get('img_per_s', float('nan')):.1f} | {r['minutes']:.1f} | "
                     f"{acc} | {loss} |")
    return "\n".join(lines) + "\n"


def main(sets: list[str], data: Optional[str], out: str, mode: str, epochs: Optional[int], parallel: int,
         device: str, only: Optional[list[str]] = None) -> list[dict[str, Any]]:
    root = Path(data).resolve() if data else default_data()
    if root is None or not (root / "flowers17").is_dir():
        raise FgvcError("no shared data found: pass --data DIR (the folder holding flowers17/ and the weight files)")
    for f in (LITE0, VIT_TINY):
        if not (root / f).is_file():
            raise FgvcError(f"missing weight file {root / f}")
    bad = [s for s in sets if s not in SETS]
    if bad:
        raise FgvcError(f"unknown set(s) {bad}; the sets: {', '.join(SETS)}")
    names = only or [n for s in sets for n in SETS[s]]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise FgvcError(f"unknown run(s) {unknown}; the runs: {', '.join(RUNS)}")
    return run_all(names, root, Path(out), mode, epochs, parallel, device)
