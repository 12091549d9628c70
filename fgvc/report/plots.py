"""The report's pictures, drawn with matplotlib (Agg: no display): training curves, several runs side by side,
the confusion matrix, per-class accuracy and a confused pair's images. Public because ``fgvc compare`` draws
with the same helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

MAX_MATRIX = 60  # classes shown whole in the confusion matrix; beyond, the most confused block


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def points_marker(points: int) -> Optional[str]:
    """A marker for a curve of so few points that a line alone would not show (one point draws no line)."""
    return "o" if points < 5 else None


def plot_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Loss terms, learning rate, training accuracy and validation accuracy against the step."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return False
    plt = pyplot()
    skip = {"kind", "step", "epoch", "lr", "grad_norm", "img_per_s", "mem_gib", "train_acc", "temperature"}
    terms = sorted({k for r in train for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    steps = [r["step"] for r in train]
    marker = points_marker(len(steps))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for term in terms:
        axes[0].plot(steps, [r.get(term, np.nan) for r in train], label=term, lw=2 if term == "loss" else 1,
                     marker=marker)
    axes[0].set(title="training loss (total and terms)", xlabel="step")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["lr"] for r in train], color="tab:purple", marker=marker)
    axes[1].set(title="learning rate (backbone)", xlabel="step")
    if any("train_acc" in r for r in train):
        axes[2].plot(steps, [r.get("train_acc", np.nan) for r in train], label="train (running)", marker=marker)
    if val:
        axes[2].plot([r["step"] for r in val], [r["top1"] for r in val], "o-", label="validation top-1")
    axes[2].set(title="accuracy (%)", xlabel="step", ylim=(0, 100))
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_run_comparison(runs: dict[str, list[dict[str, Any]]], path: Path, title: str = "",
                        reference: Sequence[str] = ()) -> bool:
    """Several runs side by side: each run's classification loss (its first ``cls`` term: the main or first
    scale's cross-entropy, without auxiliary terms) and running training accuracy against the step. The
    ``reference`` runs are drawn in thick black."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    drawn = False
    colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10").colors
    for i, (name, records) in enumerate(runs.items()):
        train = [r for r in records if r.get("kind") == "train"]
        if not train:
            continue
        term = next((k for k in train[0] if k.startswith("cls")), "loss")
        steps = [r["step"] for r in train]
        style = dict(lw=2.2, color="black") if name in reference else dict(lw=1.2, color=colors[i % len(colors)])
        style["marker"] = points_marker(len(steps))
        axes[0].plot(steps, [r.get(term, np.nan) for r in train], label=name, **style)
        axes[1].plot(steps, [r.get("train_acc", np.nan) for r in train], label=name, **style)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    axes[0].set(title="training loss: the first cls term, or the total", xlabel="step", yscale="log")
    axes[1].set(title="training accuracy, running (%)", xlabel="step", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def confused_block(confusion: np.ndarray, limit: int = MAX_MATRIX) -> np.ndarray:
    """The classes to show: all up to ``limit``, else the ``limit`` classes in the most confusions."""
    k = len(confusion)
    if k <= limit:
        return np.arange(k)
    off = confusion - np.diag(np.diag(confusion))
    weight = off.sum(0) + off.sum(1)
    return np.sort(np.argsort(-weight, kind="stable")[:limit])


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> str:
    """The confusion matrix (row-normalized) as a picture; returns a caption."""
    plt = pyplot()
    keep = confused_block(confusion)
    m = confusion[np.ix_(keep, keep)].astype(float)
    m = m / np.maximum(confusion[keep].sum(1, keepdims=True), 1)
    n = len(keep)
    size = min(14, max(5, 0.22 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    if n <= MAX_MATRIX:
        labels = [str(class_names[i])[:28] for i in keep]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=max(4, min(9, 400 // max(n, 1))))
        ax.set_yticks(range(n), labels, fontsize=max(4, min(9, 400 // max(n, 1))))
    ax.set(xlabel="predicted", ylabel="true")
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    whole = len(confusion) == n
    return ("all classes" if whole else f"the {n} classes with the most confusions, of {len(confusion)}") + \
        "; rows are true classes, normalized to 1"


def plot_per_class(per_class: Sequence[Optional[float]], class_names: Sequence[str], path: Path) -> None:
    """Per-class accuracy, sorted (the worst classes named)."""
    plt = pyplot()
    values = [(v, class_names[i]) for i, v in enumerate(per_class) if v is not None]
    values.sort()
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(range(len(values)), [v for v, _ in values], color="tab:blue", width=1.0)
    ax.set(title="per-class accuracy, sorted", xlabel="class (worst first)", ylabel="accuracy (%)", ylim=(0, 100))
    if len(values) <= 60:
        ax.set_xticks(range(len(values)), [str(n)[:24] for _, n in values], rotation=90, fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pair_figure(pair: dict[str, Any], predictions: dict[str, np.ndarray], path: Path, per_side: int = 3,
                thumb: int = 128) -> bool:
    """Images of the true class taken for the predicted one, beside images of the predicted class."""
    from PIL import Image

    from ..data.dataset import load_rgb
    from ..explain import text_block

    paths, targets, top = predictions["paths"], predictions["targets"], predictions["top_index"][:, 0]
    wrong = [p for p, t, q in zip(paths, targets, top) if t == pair["true"] and q == pair["pred"]][:per_side]
    other = [p for p, t, q in zip(paths, targets, top) if t == pair["pred"] and q == pair["pred"]][:per_side]
    if not wrong:
        return False
    half = per_side * (thumb + 4)
    heads = [text_block([(f"true {pair['true_name']}", (0, 0, 0)),
                          (f"predicted as {pair['pred_name']}", (200, 0, 0))], half),
             text_block([(f"{pair['pred_name']}, predicted right (for comparison)", (0, 110, 0))], half)]
    top_h = max(h.height for h in heads)
    canvas = Image.new("RGB", (2 * half + 20, top_h + thumb + 4), (255, 255, 255))
    for side, (head, items) in enumerate(zip(heads, (wrong, other))):
        x0 = side * (half + 20)
        canvas.paste(head, (x0, 0))
        for j, p in enumerate(items):
            try:
                im = load_rgb(str(p)).resize((thumb, thumb))
            except Exception:  # noqa: BLE001 - a moved dataset: leave the slot empty
                continue
            canvas.paste(im, (x0 + j * (thumb + 4), top_h))
    canvas.save(path)
    return True


__all__ = ["MAX_MATRIX", "pyplot", "points_marker", "plot_curves", "plot_run_comparison", "confused_block", "plot_confusion",
           "plot_per_class", "pair_figure"]
