"""``fgvc compare``: which method is best on my data? Every chosen method trained on one dataset and one
backbone under the same budget, then one page that says what differs beyond noise.

    fgvc compare ~/photos/birds --backbone resnet50.tv_in1k --epochs 10          # class folders, every method
    fgvc compare /data/stanford_cars --dataset cars --methods baseline,wsdan,cal --weights resnet50.safetensors

Each method runs its fine-tuning recipe (``METHOD/finetune``: the settings for a short fine-tune from ImageNet
weights on any dataset), with the dataset, the backbone and the budget (epochs, resolution, batch, classes)
filled in the same for all: one ``fgvc train`` process per run, ``parallel`` at a time (one on a CPU; on a GPU,
as many as its memory suits). A run's result is appended to ``OUT/results.jsonl`` as it ends, so a rerun of the
same command trains nothing that finished and continues an interrupted run from its ``last.pt``
(``--resume auto``). A dataset may also be named by a dataset file (``configs/datasets/cars196.yaml``: its
reader, where it lies and its budget).

What is written, from the runs' own report files (no test image is predicted twice):
``OUT/index.html`` (the table: test top-1, mean per-class accuracy, the difference to the baseline with its
paired interval and whether it is within noise, training images/s and minutes; every pair of methods; the
training curves side by side; per-class differences to the baseline; the classes each method fixes and
breaks; the same test images explained by every method), ``OUT/results.json`` and ``OUT/results.csv``.
Differences are paired over the test images (:mod:`fgvc.stats`).
"""

from __future__ import annotations

import csv
import html
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .errors import FgvcError
from .recipes import RECIPES, recipe_path
from .stats import describe, paired_difference

BASELINE = "baseline"
EXPLAINED = 4  # test images explained by every method


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


def finetune_recipe(method: str, backbone: Optional[str] = None) -> Path:
    """A method's fine-tuning recipe: ``METHOD/finetune_vit`` where the method has one and ``backbone`` is a plain
    ViT (the baseline: the CNN rates diverge there), else ``METHOD/finetune``."""
    vit = RECIPES / method / "finetune_vit.yaml"
    if backbone and vit.is_file() and plain_vit(backbone):
        return vit
    return recipe_path(method, "finetune")


def plain_vit(backbone: str) -> bool:
    """Whether timm's ``backbone`` is a plain ViT (probed on the meta device: no memory, no weights)."""
    from .backbones import is_vit
    from .methods.base import Method, ModelSpec

    try:
        return is_vit(Method.probe_backbone(ModelSpec(backbone=backbone, num_classes=2)))
    except Exception:  # noqa: BLE001 - an unknown name is reported where the run builds its model
        return False


def methods_for(backbone: str, img_size: int = 224) -> tuple[list[str], dict[str, str]]:
    """The methods that accept ``backbone`` (the baseline first) and, for the others, why not."""
    from .errors import ConfigError
    from .methods.base import ModelSpec
    from .registry import get_method, list_methods

    accepted, refused = [], {}
    for name in sorted(list_methods(), key=lambda m: (m != BASELINE, m)):
        try:
            finetune_recipe(name)
            get_method(name).check_backbone(ModelSpec(backbone=backbone, num_classes=2, img_size=img_size))
            accepted.append(name)
        except ConfigError as e:
            refused[name] = str(e)
    return accepted, refused


def command(c: Comparison, run: RunSpec, workers: int) -> list[str]:
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


def auto_parallel(device: str, runs: int) -> int:
    """Runs at once: one on a CPU (its cores are shared by every run); on a GPU, one per 20 GiB, at most 8."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 1
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return max(1, min(8, runs, int(gib // 20)))


# ---------------------------------------------------------------------------------------------------
# Training the runs


def read_results(out: Path) -> dict[str, dict[str, Any]]:
    """The finished runs recorded in ``OUT/results.jsonl`` (the last record of each name)."""
    done: dict[str, dict[str, Any]] = {}
    path = out / "results.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a torn last line
                continue
            done[r["name"]] = r
    return done


def summarize(run_dir: Path) -> dict[str, Any]:
    """Training figures of a finished run from its metrics.jsonl: images/s, first and last loss, the running
    training accuracy at the end, warnings."""
    from .engine.runlog import read_metrics

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    out: dict[str, Any] = {}
    if train:
        timed = train[1:] or train  # the first window pays for the workers' start
        out["img_per_s"] = sum(r["img_per_s"] for r in timed) / len(timed)
        out["first_loss"], out["last_loss"] = train[0]["loss"], train[-1]["loss"]
        if "train_acc" in train[-1]:
            out["train_acc"] = train[-1]["train_acc"]
    out["warnings"] = [r["message"] for r in records if r.get("kind") == "warning"]
    return out


def train_runs(c: Comparison, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Trains every run not yet finished with these settings; returns every run's record."""
    c.out.mkdir(parents=True, exist_ok=True)
    done = read_results(c.out)
    parallel = c.parallel or auto_parallel(c.device, len(c.runs))
    cores = os.cpu_count() or 2
    workers = max(1, min(8, cores // parallel))
    todo = []
    for run in c.runs:
        items = command(c, run, workers)
        old = done.get(run.name)
        if old and old.get("exit") == 0:
            if old["settings"] != items:
                changed = sorted(set(items) ^ set(old["settings"]))
                raise FgvcError(f"{c.out} holds a finished run '{run.name}' with other settings ({', '.join(changed)}); "
                                "choose another --out, or delete its runs/ folder and its results.jsonl line")
            continue
        todo.append((run, items))
    if not todo:
        log(f"every run is finished ({len(c.runs)}); nothing to train")
    running: list[tuple[RunSpec, list[str], subprocess.Popen, float, Any]] = []
    started = len(c.runs) - len(todo)
    while todo or running:
        while todo and len(running) < parallel:
            run, items = todo.pop(0)
            started += 1
            run_dir = c.out / "runs" / slug(run.name)
            cmd = [sys.executable, "-m", "fgvc", "train", *items, f"out={run_dir}", "--quiet", "--json",
                   "--resume", "auto"]
            log_fh = open(c.out / f"{slug(run.name)}.log", "a")
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // parallel))}
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log_fh, text=True, env=env)
            running.append((run, items, proc, time.time(), log_fh))
            log(f"started {run.name} ({started} of {len(c.runs)}): fgvc train {' '.join(items)}")
        time.sleep(1)
        for item in list(running):
            run, items, proc, t0, log_fh = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log_fh.close()
            stdout = proc.stdout.read()
            run_dir = c.out / "runs" / slug(run.name)
            with open(run_dir.parent / f"{slug(run.name)}.attempts", "a") as fh:  # minutes over every attempt
                fh.write(f"{time.time() - t0:.1f}\n")
            seconds = sum(float(x) for x in (run_dir.parent / f"{slug(run.name)}.attempts").read_text().split())
            result: dict[str, Any] = {"name": run.name, "method": run.method, "exit": proc.returncode,
                                      "minutes": seconds / 60, "settings": items, "run_dir": str(run_dir)}
            lines = [x for x in stdout.splitlines() if x.startswith("{")]
            if proc.returncode == 0 and lines:
                test = json.loads(lines[-1])
                result.update(top1=test["top1"], mean_class_acc=test["mean_class_acc"])
            else:
                tail = (c.out / f"{slug(run.name)}.log").read_text().strip().splitlines()
                result["error"] = tail[-1] if tail else f"exit {proc.returncode}"
                result["exit"] = proc.returncode or 1
            result.update(summarize(run_dir))
            with open(c.out / "results.jsonl", "a") as fh:
                fh.write(json.dumps(result) + "\n")
            done[run.name] = result
            verdict = f"top-1 {result['top1']:.2f}%" if "top1" in result else f"failed: {result['error']}"
            log(f"finished {run.name}: {verdict} in {result['minutes']:.1f} min")
    return {r.name: done[r.name] for r in c.runs if r.name in done}


# ---------------------------------------------------------------------------------------------------
# Analysis: the runs' own report files, paired over the same test images


def test_outcomes(run_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per test image of a finished run: its path, its label and whether the run's top-1 was right."""
    f = Path(run_dir) / "report" / "test_predictions.npz"
    if not f.is_file():
        raise FgvcError(f"{f} is missing (a run with unreadable test images keeps no per-image predictions)")
    p = np.load(f)
    return [str(x) for x in p["paths"]], p["targets"].astype(int), p["top_index"][:, 0] == p["targets"]


def per_class_counts(targets: np.ndarray, flags: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(targets[flags], minlength=k)


def analyze(c: Comparison, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison's numbers: each run's figures, its difference to the baseline (paired, with interval
    and verdict), per-class accuracies and their differences, the classes it fixes and breaks, every pair."""
    ok = {n: r for n, r in results.items() if r.get("exit") == 0}
    if not ok:
        raise FgvcError("no run finished; see the logs in " + str(c.out))
    first = next(iter(ok.values()))
    names = json.loads((Path(first["run_dir"]) / "labels.json").read_text())["class_names"]
    ref_paths, ref_targets, _ = test_outcomes(Path(first["run_dir"]))
    outcomes = {}
    for n, r in ok.items():
        paths, targets, right = test_outcomes(Path(r["run_dir"]))
        if paths != ref_paths or not np.array_equal(targets, ref_targets):
            raise FgvcError(f"run '{n}' was tested on other images than '{first['name']}': not comparable")
        outcomes[n] = right
    k = len(names)
    counts = np.bincount(ref_targets, minlength=k)
    base = BASELINE if BASELINE in outcomes else None
    rows = []
    for spec in c.runs:
        r = results.get(spec.name)
        if r is None:
            continue
        row = {k_: r.get(k_) for k_ in ("name", "method", "top1", "mean_class_acc", "img_per_s", "minutes",
                                        "train_acc", "last_loss", "error", "warnings", "run_dir")}
        row["command"] = "fgvc train " + " ".join(r["settings"])
        if spec.name in outcomes:
            right = outcomes[spec.name]
            per_class = 100.0 * per_class_counts(ref_targets, right, k) / np.maximum(counts, 1)
            row["per_class"] = [round(float(v), 3) for v in per_class]
            if base and spec.name != base:
                row["vs_baseline"] = paired_difference(right, outcomes[base])
                fixed = per_class_counts(ref_targets, right & ~outcomes[base], k)
                broken = per_class_counts(ref_targets, ~right & outcomes[base], k)
                row["fixes"] = [{"class": names[i], "images": int(fixed[i])} for i in np.argsort(-fixed, kind="stable")
                                if fixed[i] > 0][:5]
                row["breaks"] = [{"class": names[i], "images": int(broken[i])}
                                 for i in np.argsort(-broken, kind="stable") if broken[i] > 0][:5]
        rows.append(row)
    pairs = []
    order = [s.name for s in c.runs if s.name in outcomes]
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            pairs.append({"first": a, "second": b, **paired_difference(outcomes[a], outcomes[b])})
    return {"title": c.title, "dataset": c.dataset, "root": c.root, "backbone": c.backbone,
            "budget": {k_: v for k_, v in vars(c.budget).items() if v}, "classes": k, "test_images": int(len(ref_targets)),
            "class_names": names, "baseline": base, "runs": rows, "pairs": pairs, "machine": machine(),
            "date": date.today().isoformat(), "explained": pick_explained(outcomes, ref_targets, base, ref_paths),
            "test_paths": ref_paths, "test_targets": ref_targets.tolist()}


def pick_explained(outcomes: dict[str, np.ndarray], targets: np.ndarray, base: Optional[str],
                   paths: list[str], count: int = EXPLAINED) -> list[int]:
    """Test images where the methods disagree most (right for about half of them), the baseline's mistakes
    first, one per class, in a fixed order; the first images when every method agrees on all."""
    right = np.stack(list(outcomes.values())).astype(float)
    share = right.mean(0)
    score = share * (1 - share)
    if base is not None:
        score = score + 0.01 * (~outcomes[base])
    picked, classes = [], set()
    for i in np.argsort(-score, kind="stable"):
        if targets[i] in classes:
            continue
        picked.append(int(i))
        classes.add(int(targets[i]))
        if len(picked) == count:
            break
    return picked


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}"


# ---------------------------------------------------------------------------------------------------
# Files and the page


def write_files(summary: dict[str, Any], out: Path) -> None:
    """``results.json`` (everything) and ``results.csv`` (a row per run)."""
    slim = {k: v for k, v in summary.items() if k not in ("test_paths", "test_targets")}
    (out / "results.json").write_text(json.dumps(slim, indent=1))
    fields = ["name", "method", "top1", "mean_class_acc", "diff_vs_baseline", "ci_low", "ci_high", "p_value",
              "verdict", "only_this_right", "only_baseline_right", "img_per_s", "minutes", "error"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in summary["runs"]:
            v = r.get("vs_baseline") or {}
            w.writerow({"name": r["name"], "method": r["method"], "top1": r.get("top1"),
                        "mean_class_acc": r.get("mean_class_acc"), "diff_vs_baseline": v.get("diff"),
                        "ci_low": v.get("ci_low"), "ci_high": v.get("ci_high"), "p_value": v.get("p_value"),
                        "verdict": v.get("verdict", "reference" if r["name"] == summary["baseline"] else ""),
                        "only_this_right": v.get("only_first"), "only_baseline_right": v.get("only_second"),
                        "img_per_s": r.get("img_per_s"), "minutes": r.get("minutes"), "error": r.get("error")})


def plot_per_class(summary: dict[str, Any], path: Path) -> bool:
    """One row per method: its per-class accuracy minus the baseline's, classes sorted (green: better)."""
    from .report import _plt

    base = next((r for r in summary["runs"] if r["name"] == summary["baseline"] and r.get("per_class")), None)
    rows = [r for r in summary["runs"] if r.get("per_class") and r is not base]
    if base is None or not rows:
        return False
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.7 * len(rows) + 0.6), squeeze=False)
    ref = np.array(base["per_class"])
    for ax, r in zip(axes[:, 0], rows):
        d = np.sort(np.array(r["per_class"]) - ref)
        ax.bar(range(len(d)), d, width=1.0, color=np.where(d >= 0, "tab:green", "tab:red"))
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(f"{r['name']}: {int((d > 0).sum())} classes better, {int((d < 0).sum())} worse, "
                     f"{int((d == 0).sum())} the same", fontsize=9, loc="left")
        ax.set_xlim(-0.5, len(d) - 0.5)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("class (sorted by the difference)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_curves(summary: dict[str, Any], out: Path) -> bool:
    from .engine.runlog import read_metrics
    from .report import plot_run_comparison

    group = {r["name"]: read_metrics(Path(r["run_dir"])) for r in summary["runs"] if r.get("run_dir")}
    return plot_run_comparison(group, out / "curves.png", summary.get("title") or "training curves",
                               reference=(BASELINE,))


def explain_images(summary: dict[str, Any], out: Path, device: str = "auto") -> dict[str, list[str]]:
    """The chosen test images explained by every run: ``OUT/explain/RUN/NNN_name.png``; an existing file is kept."""
    from .explain import explain_tensors
    from .run import load_run

    picks = summary["explained"]
    paths = [summary["test_paths"][i] for i in picks]
    truths = [summary["test_targets"][i] for i in picks]
    shown: dict[str, list[str]] = {}
    for r in summary["runs"]:
        if not r.get("per_class"):
            continue
        folder = out / "explain" / slug(r["name"])
        names = [f"{j:03d}_{Path(p).stem}" for j, p in enumerate(paths)]
        if not all((folder / f"{n}.png").is_file() for n in names):
            run = load_run(r["run_dir"], device=device)
            batch = next(run.batches(paths, batch_size=len(paths), skip_unreadable=False))
            explain_tensors(run.model, batch.images, run.class_names, (run.preprocess.mean, run.preprocess.std),
                            folder, names, truths=truths)
        shown[r["name"]] = [f"explain/{slug(r['name'])}/{n}.png" for n in names]
    return shown


def _cell(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def build_page(summary: dict[str, Any], out: Path, shown: dict[str, list[str]]) -> Path:
    """``OUT/index.html``: a page that opens from the folder (no server, nothing to install)."""
    from .report import html_page

    e = html.escape
    base = summary["baseline"]
    runs = summary["runs"]
    b = summary["budget"]
    setting = (f"{summary['backbone']}, {b.get('epochs', 'the recipes’')} epochs at "
               f"{b.get('img_size', 'the recipes’')} px" + (f", the first {b['classes']} classes" if b.get("classes") else ""))
    parts = [f"<h1>{e(summary.get('title') or 'fgvc compare')}</h1>",
             f"<p class='big'>{e(summary['dataset'])}: {summary['classes']} classes, {summary['test_images']} test "
             f"images; {e(setting)}. {e(summary['machine'])}, {summary['date']}.</p>"]
    done = [r for r in runs if r.get("top1") is not None]
    if done:
        best = max(done, key=lambda r: r["top1"])
        v = best.get("vs_baseline")
        parts.append(f"<p class='big'>Highest test top-1: <b>{e(best['name'])}</b> at {best['top1']:.2f}%"
                     + (f"; against the baseline {e(describe(v, best['name'], base))}." if v else ".") + "</p>")
    noise = [r["name"] for r in runs if (r.get("vs_baseline") or {}).get("verdict") == "within noise"]
    beyond = [(r["name"], r["vs_baseline"]["verdict"]) for r in runs
              if (r.get("vs_baseline") or {}).get("verdict") in ("better", "worse")]
    if base:
        words = []
        if noise:
            words.append(f"Within noise of the baseline (exact McNemar p ≥ 0.05): {', '.join(map(e, noise))}.")
        if beyond:
            words.append("Beyond noise: " + ", ".join(f"{e(n)} {v}" for n, v in beyond) + ".")
        parts.append(f"<p id='noise'>{' '.join(words)} Each difference is paired over the same test images: a 95% "
                     "bootstrap interval and the exact McNemar test (docs/benchmarks.md says why).</p>")
    parts.append("<h2>Results</h2><table id='results'><tr><th>run</th><th>method</th><th>test top-1</th>"
                 "<th>mean per class</th><th>vs baseline (points, 95% interval)</th><th>p</th><th>verdict</th>"
                 "<th>train images/s</th><th>minutes</th><th>report</th></tr>")
    for r in runs:
        v = r.get("vs_baseline") or {}
        report = f"runs/{slug(r['name'])}/report/index.html"
        status = "reference" if r["name"] == base else v.get("verdict", "")
        if r.get("error"):
            status = "failed: " + r["error"]
        cls = {"better": "good", "worse": "bad"}.get(v.get("verdict"), "")
        parts.append(f"<tr class='{cls}'><td>{e(r['name'])}</td><td>{e(r['method'])}</td><td>{_cell(r.get('top1'))}%</td>"
                     f"<td>{_cell(r.get('mean_class_acc'))}%</td><td>"
                     + (f"{v['diff']:+.2f} [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}]" if v else "") + "</td>"
                     f"<td>{_cell(v.get('p_value'), '{:.2g}')}</td><td>{e(status)}</td>"
                     f"<td>{_cell(r.get('img_per_s'), '{:.1f}')}</td><td>{_cell(r.get('minutes'), '{:.1f}')}</td>"
                     f"<td><a href='{report}'>report</a></td></tr>")
    parts.append("</table>")
    names = [r["name"] for r in runs if r.get("per_class")]
    if len(names) > 2:
        pair = {(p["first"], p["second"]): p for p in summary["pairs"]}
        parts.append("<h2>Every pair</h2><p>Row minus column, in points, with the 95% paired interval; green or red: "
                     "beyond noise (exact McNemar p &lt; 0.05), grey: within noise.</p><table id='pairs'><tr><th></th>"
                     + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>")
        for a in names:
            cells = []
            for col in names:
                p = pair.get((a, col)) or pair.get((col, a))
                if a == col or p is None:
                    cells.append("<td></td>")
                    continue
                sign = 1 if p["first"] == a else -1
                d, lo, hi = (sign * p["diff"], *sorted((sign * p["ci_low"], sign * p["ci_high"])))
                cls = "noise" if p["verdict"] == "within noise" else ("good" if d > 0 else "bad")
                cells.append(f"<td class='{cls}'>{d:+.1f} [{lo:+.1f}, {hi:+.1f}]</td>")
            parts.append(f"<tr><th>{e(a)}</th>{''.join(cells)}</tr>")
        parts.append("</table>")
    if plot_curves(summary, out):
        parts.append("<h2>Training curves</h2><img class='plot' id='curves' src='curves.png' alt='training curves'>")
    if plot_per_class(summary, out / "per_class.png"):
        parts.append("<h2>Per-class accuracy against the baseline</h2><img class='plot' id='per-class' "
                     "src='per_class.png' alt='per-class differences'>")
    fixes = [r for r in runs if "fixes" in r]
    if fixes:
        parts.append("<h2>What each method fixes and breaks</h2><p>Test images the baseline gets wrong and the "
                     "method right (fixes), and the reverse (breaks), by class.</p><table id='fixes'><tr><th>run</th>"
                     "<th>fixes</th><th>breaks</th><th>classes fixed most</th><th>classes broken most</th></tr>")
        for r in fixes:
            v = r["vs_baseline"]
            fx = ", ".join(f"{e(x['class'])} ({x['images']})" for x in r["fixes"])
            br = ", ".join(f"{e(x['class'])} ({x['images']})" for x in r["breaks"])
            parts.append(f"<tr><td>{e(r['name'])}</td><td>{v['only_first']}</td><td>{v['only_second']}</td>"
                         f"<td>{fx}</td><td>{br}</td></tr>")
        parts.append("</table>")
    if shown:
        parts.append("<h2>The same test images, explained by every method</h2><p>The images where the methods "
                     "disagree most; each figure gives the truth, the prediction and what the method looked at.</p>"
                     "<table id='explain'><tr>" + "".join(f"<th>{e(n)}</th>" for n in shown) + "</tr>")
        for j in range(len(next(iter(shown.values())))):
            parts.append("<tr>" + "".join(f"<td><a href='{v[j]}'><img class='overlay' src='{v[j]}' alt='{e(n)}'>"
                                          "</a></td>" for n, v in shown.items()) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>How each run was trained</h2><ul>" + "".join(
        f"<li><b>{e(r['name'])}</b>: <code>{e(r['command'])}</code></li>" for r in runs) + "</ul>")
    parts.append("<p>Numbers: <a href='results.json'>results.json</a>, <a href='results.csv'>results.csv</a>.</p>")
    path = out / "index.html"
    path.write_text(html_page(f"fgvc compare: {summary.get('title') or summary['dataset']}", parts,
                              "table{margin:.5em 0}td,th{vertical-align:top}.good{background:#e3f6e3}"
                              ".bad{background:#fbe3e3}.noise{color:#666}img.overlay{max-width:320px}"
                              "code{font-size:.85em}"))
    return path


def run_comparison(c: Comparison, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains what is not finished, then writes the page, ``results.json`` and ``results.csv``; returns the
    summary (what ``results.json`` holds)."""
    results = train_runs(c, log)
    summary = analyze(c, results)
    write_files(summary, c.out)
    shown = explain_images(summary, c.out, "cpu" if c.device == "cpu" else "auto")
    build_page(summary, c.out, shown)
    log(f"wrote {c.out / 'index.html'}, {c.out / 'results.json'} and {c.out / 'results.csv'}")
    return summary


def table(summary: dict[str, Any]) -> str:
    """The results as a Markdown table (what the command prints)."""
    lines = ["| run | test top-1 | mean per class | vs baseline [95% interval] | p | verdict | train images/s | "
             "minutes |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        v = r.get("vs_baseline") or {}
        diff = f"{v['diff']:+.2f} [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}]" if v else "-"
        verdict = "reference" if r["name"] == summary["baseline"] else v.get("verdict", r.get("error") or "-")
        lines.append(f"| {r['name']} | {_cell(r.get('top1'))}% | {_cell(r.get('mean_class_acc'))}% | {diff} | "
                     f"{_cell(v.get('p_value'), '{:.2g}')} | {verdict} | {_cell(r.get('img_per_s'), '{:.1f}')} | "
                     f"{_cell(r.get('minutes'), '{:.1f}')} |")
    return "\n".join(lines) + "\n"


__all__ = ["Comparison", "RunSpec", "Budget", "run_comparison", "methods_for", "command", "dataset_file", "table",
           "analyze", "build_page"]
