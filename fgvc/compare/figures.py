"""The comparison's pictures: the runs' training curves side by side, each run's per-class accuracy against the
baseline's, and the same test images explained by every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..report.metrics import read_metrics
from ..report.plots import plot_run_comparison, pyplot
from .plan import BASELINE, slug


def plot_per_class_differences(summary: dict[str, Any], path: Path) -> bool:
    """One row per method: its per-class accuracy minus the baseline's, classes sorted (green: better)."""
    baseline = next((r for r in summary["runs"] if r["name"] == summary["baseline"] and r.get("per_class")), None)
    rows = [r for r in summary["runs"] if r.get("per_class") and r is not baseline]
    if baseline is None or not rows:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.7 * len(rows) + 0.6), squeeze=False)
    reference = np.array(baseline["per_class"])
    for ax, row in zip(axes[:, 0], rows):
        differences = np.sort(np.array(row["per_class"]) - reference)
        ax.bar(range(len(differences)), differences, width=1.0,
               color=np.where(differences >= 0, "tab:green", "tab:red"))
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(f"{row['name']}: {int((differences > 0).sum())} classes better, "
                     f"{int((differences < 0).sum())} worse, {int((differences == 0).sum())} the same",
                     fontsize=9, loc="left")
        ax.set_xlim(-0.5, len(differences) - 0.5)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("class (sorted by the difference)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_runs_curves(summary: dict[str, Any], out: Path) -> bool:
    """Every run's training loss and accuracy in one figure (``OUT/curves.png``), the baseline in black."""
    group = {r["name"]: read_metrics(Path(r["run_dir"])) for r in summary["runs"] if r.get("run_dir")}
    return plot_run_comparison(group, out / "curves.png", summary.get("title") or "training curves",
                               reference=(BASELINE,))


def explain_images(summary: dict[str, Any], out: Path, device: str = "auto") -> dict[str, list[str]]:
    """The chosen test images explained by every run: ``OUT/explain/RUN/NNN_name.png``; an existing file is kept."""
    from ..explain import explain_tensors
    from ..run import load_run

    picks = summary["explained"]
    paths = [summary["test_paths"][i] for i in picks]
    truths = [summary["test_targets"][i] for i in picks]
    shown: dict[str, list[str]] = {}
    for row in summary["runs"]:
        if not row.get("per_class"):
            continue
        folder = out / "explain" / slug(row["name"])
        names = [f"{j:03d}_{Path(p).stem}" for j, p in enumerate(paths)]
        if not all((folder / f"{n}.png").is_file() for n in names):
            run = load_run(row["run_dir"], device=device)
            batch = next(run.batches(paths, batch_size=len(paths), skip_unreadable=False))
            explain_tensors(run.model, batch.images, run.class_names, (run.preprocess.mean, run.preprocess.std),
                            folder, names, truths=truths)
        shown[row["name"]] = [f"explain/{slug(row['name'])}/{n}.png" for n in names]
    return shown


__all__ = ["plot_per_class_differences", "plot_runs_curves", "explain_images"]
