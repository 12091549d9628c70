"""The arithmetic of an evaluation (top-k, mean per-class accuracy, confusion, the most-confused pairs) and the
reading of a run's ``metrics.jsonl``: pure functions that the engine, the report, compare and the benchmarks all
use, so none of them needs another to get at them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..arrays import as_numpy
from .tables import markdown_table

METRICS_FILE = "metrics.jsonl"  # one JSON record per line, written by the engine's RunLog


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]`` booleans: is the target among the top ``k`` predictions."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets[:, None]).any(1)


def classification_report(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
                          topk: int = 5, pairs: int = 10) -> dict[str, Any]:
    """The evaluation report of one split.

    Args:
        logits: ``[N, K]`` (any monotone transform of the probabilities).
        targets: ``[N]``.
        class_names: ``K`` names, for the confused pairs.
        topk: The k of top-k accuracy.
        pairs: How many most-confused (true, predicted) pairs to list.

    Returns:
        ``top1``, ``top{k}``, ``mean_class_acc`` (mean over classes present in the split), ``per_class``,
        ``confused_pairs`` (with names and counts), ``num_images`` and ``num_classes``. Accuracies in %.
    """
    logits, targets = logits.float().cpu(), targets.long().cpu()
    n, k_classes = logits.shape
    pred = logits.argmax(1)
    correct = as_numpy(pred == targets)
    t = as_numpy(targets)
    counts = np.bincount(t, minlength=k_classes)
    hits = np.bincount(t, weights=correct, minlength=k_classes)
    present = counts > 0
    per_class = np.where(present, hits / np.maximum(counts, 1), np.nan)
    wrong = ~correct
    pair_keys, pair_counts = np.unique(t[wrong] * k_classes + as_numpy(pred)[wrong], return_counts=True)
    order = np.argsort(-pair_counts, kind="stable")[:pairs]
    confused = [{"true": int(pair_keys[i] // k_classes), "pred": int(pair_keys[i] % k_classes),
                 "true_name": class_names[int(pair_keys[i] // k_classes)],
                 "pred_name": class_names[int(pair_keys[i] % k_classes)], "count": int(pair_counts[i]),
                 "of": int(counts[int(pair_keys[i] // k_classes)])} for i in order]
    return {
        "num_images": int(n),
        "num_classes": int(k_classes),
        "top1": 100.0 * float(correct.mean()) if n else float("nan"),
        f"top{topk}": 100.0 * float(topk_correct(logits, targets, topk).float().mean()) if n else float("nan"),
        "mean_class_acc": 100.0 * float(np.nanmean(per_class)) if present.any() else float("nan"),
        "per_class": [None if np.isnan(v) else round(100.0 * float(v), 3) for v in per_class],
        "confused_pairs": confused,
    }


def confusion_matrix(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts, rows = true class, columns = prediction."""
    pred = as_numpy(logits.argmax(1))
    t = as_numpy(targets)
    return np.bincount(t * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def report_markdown(report: dict[str, Any], title: str, topk: int = 5, extra: Optional[dict[str, Any]] = None) -> str:
    """A short human-readable summary of :func:`classification_report`."""
    lines = [f"# {title}", "", f"- images: {report['num_images']}, classes: {report['num_classes']}",
             f"- top-1: {report['top1']:.2f}%", f"- top-{topk}: {report[f'top{topk}']:.2f}%",
             f"- mean per-class accuracy: {report['mean_class_acc']:.2f}%"]
    for k, v in (extra or {}).items():
        lines.append(f"- {k}: {v}")
    if report["confused_pairs"]:
        lines += ["", "## Most-confused pairs", ""]
        table = markdown_table(["true", "predicted as", "images"],
                               [[p["true_name"], p["pred_name"], f"{p['count']} of {p['of']}"]
                                for p in report["confused_pairs"]])
        return "\n".join(lines) + "\n" + table
    return "\n".join(lines) + "\n"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (empty when there is none); a torn last line is ignored."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


__all__ = ["METRICS_FILE", "topk_correct", "classification_report", "confusion_matrix", "report_markdown",
           "read_metrics"]
