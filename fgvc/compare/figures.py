"""The comparison's pictures: accuracy against cost with the Pareto fronts; per backbone, the rows' training curves
side by side, each row's per-class accuracy against the reference's, and the same test images explained by every
row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..report.metrics import read_metrics
from ..report.plots import plot_run_comparison, points_marker, pyplot
from .cost import AXES
from .plan import slug

MODE_MARKERS = {"full": "o", "lora": "s", "linear": "^"}


def plot_costs(summary: dict[str, Any], path: Path) -> bool:
    """Test top-1 against each cost (training s/image, inference images/s, parameters trained; log scales), a
    colour per backbone, a marker per fine-tuning mode; the Pareto front of each panel drawn and its rows ringed."""
    rows = [r for r in summary["rows"] if r.get("top1") is not None]
    if not rows:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    colors = plt.get_cmap("tab10").colors
    color_of = {b: colors[i % len(colors)] for i, b in enumerate(summary["backbones"])}
    for ax, (axis, (field, lower, words)) in zip(axes, AXES.items()):
        drawn = [r for r in rows if r.get(field)]
        for r in drawn:
            ax.scatter(r[field], r["top1"], color=color_of[r["backbone"]], marker=MODE_MARKERS.get(r["mode"], "o"),
                       s=46, zorder=3)
            ax.annotate(r["name"], (r[field], r["top1"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = sorted((r for r in drawn if r["key"] in summary["pareto"][axis]), key=lambda r: r[field])
        if front:
            ax.plot([r[field] for r in front], [r["top1"] for r in front], "--", color="black", lw=1, zorder=2,
                    marker=points_marker(len(front)))
            ax.scatter([r[field] for r in front], [r["top1"] for r in front], s=160, facecolors="none",
                       edgecolors="black", zorder=4, label="Pareto front")
        ax.set(xscale="log", xlabel=words + (" (lower is better)" if lower else " (higher is better)"),
               ylabel="test top-1 (%)", title=f"accuracy against {words}")
        ax.grid(alpha=0.3, which="both")
    handles = [plt.Line2D([], [], color=color_of[b], marker="o", ls="", label=b) for b in summary["backbones"]]
    handles += [plt.Line2D([], [], color="grey", marker=m, ls="", label=f"{mode} fine-tuning")
                for mode, m in MODE_MARKERS.items() if mode in summary["modes"]]
    handles.append(plt.Line2D([], [], color="black", ls="--", marker="o", mfc="none", label="Pareto front"))
    axes[0].legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_per_class_differences(rows: list[dict[str, Any]], reference: Optional[str], path: Path) -> bool:
    """One panel per row: its per-class accuracy minus the reference's, classes sorted (green: better)."""
    base = next((r for r in rows if r["name"] == reference and r.get("per_class")), None)
    others = [r for r in rows if r.get("per_class") and r is not base]
    if base is None or not others:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(len(others), 1, figsize=(12, 1.7 * len(others) + 0.6), squeeze=False)
    baseline = np.array(base["per_class"])
    for ax, row in zip(axes[:, 0], others):
        differences = np.sort(np.array(row["per_class"]) - baseline)
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


def plot_runs_curves(rows: list[dict[str, Any]], reference: Optional[str], path: Path, title: str) -> bool:
    """The rows' training loss and accuracy in one figure, the reference in black."""
    group = {r["name"]: read_metrics(Path(r["run_dir"])) for r in rows if r.get("run_dir")}
    return plot_run_comparison(group, path, title, reference=(reference,) if reference else ())


def explain_images(summary: dict[str, Any], out: Path, backbone: str, device: str = "auto") -> dict[str, list[str]]:
    """The backbone's chosen test images explained by each of its rows: ``OUT/explain/BACKBONE/ROW/NNN_name.png``;
    an existing file is kept."""
    from ..explain import explain_tensors
    from ..run import load_run

    picks = summary["per_backbone"][backbone]["explained"]
    paths = [summary["test_paths"][i] for i in picks]
    truths = [summary["test_targets"][i] for i in picks]
    shown: dict[str, list[str]] = {}
    for row in summary["rows"]:
        if row["backbone"] != backbone or not row.get("per_class"):
            continue
        folder = out / "explain" / row["key"]
        names = [f"{j:03d}_{Path(p).stem}" for j, p in enumerate(paths)]
        if not all((folder / f"{n}.png").is_file() for n in names):
            run = load_run(row["run_dir"], device=device)
            batch = next(run.batches(paths, batch_size=len(paths), skip_unreadable=False))
            explain_tensors(run.model, batch.images, run.class_names, (run.preprocess.mean, run.preprocess.std),
                            folder, names, truths=truths)
        shown[row["name"]] = [f"explain/{row['key']}/{n}.png" for n in names]
    return shown


def figure_name(backbone: str, what: str) -> str:
    return f"{what}_{slug(backbone)}.png"


__all__ = ["plot_costs", "plot_per_class_differences", "plot_runs_curves", "explain_images", "figure_name"]
