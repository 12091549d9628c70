"""The analysis of a comparison, from the runs' own report files (no test image is predicted twice): each run's
figures, its difference to the baseline paired over the same test images (:mod:`.stats`), per-class accuracies
and their differences, the classes it fixes and breaks, every pair of runs, and the test images worth explaining.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import FgvcError
from .plan import BASELINE, Comparison
from .stats import paired_difference

EXPLAINED = 4  # test images explained by every method
LISTED_CLASSES = 5  # classes named as fixed most and broken most


def test_outcomes(run_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per test image of a finished run: its path, its label and whether the run's top-1 was right."""
    path = Path(run_dir) / "report" / "test_predictions.npz"
    if not path.is_file():
        raise FgvcError(f"{path} is missing (a run with unreadable test images keeps no per-image predictions)")
    predictions = np.load(path)
    targets = predictions["targets"].astype(int)
    return [str(p) for p in predictions["paths"]], targets, predictions["top_index"][:, 0] == targets


def per_class_counts(targets: np.ndarray, flags: np.ndarray, classes: int) -> np.ndarray:
    """How many images of each class have ``flags`` set."""
    return np.bincount(targets[flags], minlength=classes)


def most_affected(counts: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """The classes with the largest nonzero counts, largest first: ``[{"class", "images"}, ...]``."""
    order = [i for i in np.argsort(-counts, kind="stable") if counts[i] > 0][:LISTED_CLASSES]
    return [{"class": names[i], "images": int(counts[i])} for i in order]


def machine() -> str:
    """The device the runs trained on, in words."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def run_row(record: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run that the page and the files show."""
    keys = ("name", "method", "top1", "mean_class_acc", "img_per_s", "minutes", "train_acc", "last_loss", "error",
            "warnings", "run_dir")
    row = {key: record.get(key) for key in keys}
    row["command"] = "fgvc train " + " ".join(record["settings"])
    return row


def analyze(c: Comparison, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison's numbers: each run's figures, its difference to the baseline (paired, with interval
    and verdict), per-class accuracies and their differences, the classes it fixes and breaks, every pair."""
    finished = {name: r for name, r in results.items() if r.get("exit") == 0}
    if not finished:
        raise FgvcError("no run finished; see the logs in " + str(c.out))
    first = next(iter(finished.values()))
    names = json.loads((Path(first["run_dir"]) / "labels.json").read_text())["class_names"]
    paths, targets, _ = test_outcomes(Path(first["run_dir"]))
    right: dict[str, np.ndarray] = {}
    for name, record in finished.items():
        run_paths, run_targets, run_right = test_outcomes(Path(record["run_dir"]))
        if run_paths != paths or not np.array_equal(run_targets, targets):
            raise FgvcError(f"run '{name}' was tested on other images than '{first['name']}': not comparable")
        right[name] = run_right
    classes = len(names)
    images_per_class = np.maximum(np.bincount(targets, minlength=classes), 1)
    baseline = BASELINE if BASELINE in right else None
    rows = []
    for spec in c.runs:
        if spec.name not in results:
            continue
        row = run_row(results[spec.name])
        if spec.name in right:
            mine = right[spec.name]
            row["per_class"] = [round(float(v), 3) for v in
                                100.0 * per_class_counts(targets, mine, classes) / images_per_class]
            if baseline and spec.name != baseline:
                theirs = right[baseline]
                row["vs_baseline"] = paired_difference(mine, theirs)
                row["fixes"] = most_affected(per_class_counts(targets, mine & ~theirs, classes), names)
                row["breaks"] = most_affected(per_class_counts(targets, ~mine & theirs, classes), names)
        rows.append(row)
    order = [spec.name for spec in c.runs if spec.name in right]
    pairs = [{"first": a, "second": b, **paired_difference(right[a], right[b])}
             for i, a in enumerate(order) for b in order[i + 1:]]
    return {"title": c.title, "dataset": c.dataset, "root": c.root, "backbone": c.backbone,
            "budget": {key: value for key, value in vars(c.budget).items() if value}, "classes": classes,
            "test_images": int(len(targets)), "class_names": names, "baseline": baseline, "runs": rows,
            "pairs": pairs, "machine": machine(), "date": date.today().isoformat(),
            "explained": pick_explained(right, targets, baseline), "test_paths": paths,
            "test_targets": targets.tolist()}


def pick_explained(right: dict[str, np.ndarray], targets: np.ndarray, baseline: Optional[str],
                   count: int = EXPLAINED) -> list[int]:
    """Test images where the methods disagree most (right for about half of them), the baseline's mistakes
    first, one per class, in a fixed order; the first images when every method agrees on all."""
    share = np.stack(list(right.values())).astype(float).mean(0)
    score = share * (1 - share)
    if baseline is not None:
        score = score + 0.01 * (~right[baseline])
    picked, classes = [], set()
    for i in np.argsort(-score, kind="stable"):
        if targets[i] in classes:
            continue
        picked.append(int(i))
        classes.add(int(targets[i]))
        if len(picked) == count:
            break
    return picked


__all__ = ["EXPLAINED", "test_outcomes", "analyze", "pick_explained", "machine"]
