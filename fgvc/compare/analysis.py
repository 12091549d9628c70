"""The analysis of a comparison, from the runs' own report files (no test image is predicted twice): each row's
figures, its difference to the same backbone's plain fine-tuning paired over the same test images (:mod:`.stats`),
per-class accuracies and their differences, the classes it fixes and breaks, every pair of rows on a backbone, the
test images worth explaining, and the rows that do not apply with the reason.
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
from .plan import Comparison, Row
from .stats import paired_difference

EXPLAINED = 4  # test images explained by every row
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


ROW_FIGURES = ("top1", "mean_class_acc", "img_per_s", "train_s_per_img", "minutes", "train_acc", "last_loss", "error",
               "warnings", "run_dir", "parameters", "trainable")


def row_record(row: Row, result: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one row that the page and the files show."""
    record = {"name": row.name, "method": row.spec.method, "mode": row.mode, "backbone": row.backbone, "key": row.key,
              "reference": row.is_reference}
    if row.refused:
        return {**record, "refused": row.refused}
    result = result or {}
    record.update({k: result.get(k) for k in ROW_FIGURES})
    record["command"] = "fgvc train " + " ".join(result.get("settings", []))
    return record


def compare_backbone(records: list[dict[str, Any]], right: dict[str, np.ndarray], targets: np.ndarray,
                     names: list[str]) -> tuple[list[dict[str, Any]], Optional[str]]:
    """The paired differences of one backbone's rows against its reference, per class and overall; returns every
    pair of its tested rows and the reference's name (None without one)."""
    classes = len(names)
    per_image = np.maximum(np.bincount(targets, minlength=classes), 1)
    reference = next((r["name"] for r in records if r["reference"] and r["name"] in right), None)
    for record in records:
        mine = right.get(record["name"])
        if mine is None:
            continue
        record["per_class"] = [round(float(v), 3) for v in 100.0 * per_class_counts(targets, mine, classes) / per_image]
        if reference and record["name"] != reference:
            theirs = right[reference]
            record["vs_baseline"] = paired_difference(mine, theirs)
            record["fixes"] = most_affected(per_class_counts(targets, mine & ~theirs, classes), names)
            record["breaks"] = most_affected(per_class_counts(targets, ~mine & theirs, classes), names)
    order = [r["name"] for r in records if r["name"] in right]
    pairs = [{"first": a, "second": b, **paired_difference(right[a], right[b])}
             for i, a in enumerate(order) for b in order[i + 1:]]
    return pairs, reference


def analyze(c: Comparison, plan: list[Row], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison's numbers, per backbone: each row's figures and its difference to the backbone's plain
    fine-tuning (paired, with interval and verdict), per-class accuracies and differences, fixes and breaks, every
    pair; the rows that do not apply, with the reason."""
    finished = {key: r for key, r in results.items() if r.get("exit") == 0}
    if not finished:
        raise FgvcError("no run finished; see the logs in " + str(c.out / "logs"))
    first = next(iter(finished.values()))
    names = json.loads((Path(first["run_dir"]) / "labels.json").read_text())["class_names"]
    paths, targets, _ = test_outcomes(Path(first["run_dir"]))
    records, backbones = [], {}
    for backbone in c.backbones:
        group = [row_record(row, results.get(row.key)) for row in plan if row.backbone == backbone]
        right = {}
        for record in group:
            result = finished.get(record["key"])
            if result is None:
                continue
            run_paths, run_targets, run_right = test_outcomes(Path(result["run_dir"]))
            if run_paths != paths or not np.array_equal(run_targets, targets):
                raise FgvcError(f"'{record['name']}' on {backbone} was tested on other images than "
                                f"'{first['name']}': not comparable")
            right[record["name"]] = run_right
        pairs, reference = compare_backbone(group, right, targets, names)
        backbones[backbone] = {"reference": reference, "pairs": pairs,
                               "explained": pick_explained(right, targets, reference) if right else []}
        records += group
    return {"title": c.title, "dataset": c.dataset, "root": c.root, "backbones": c.backbones, "modes": c.modes,
            "budget": {key: value for key, value in vars(c.budget).items() if value}, "tune": c.tune,
            "val_fraction": c.val_fraction if c.tune else None, "classes": len(names),
            "test_images": int(len(targets)), "class_names": names, "rows": records, "per_backbone": backbones,
            "machine": machine(), "date": date.today().isoformat(), "test_paths": paths,
            "test_targets": targets.tolist()}


def pick_explained(right: dict[str, np.ndarray], targets: np.ndarray, reference: Optional[str],
                   count: int = EXPLAINED) -> list[int]:
    """Test images where the rows disagree most (right for about half of them), the reference's mistakes
    first, one per class, in a fixed order; the first images when every row agrees on all."""
    share = np.stack(list(right.values())).astype(float).mean(0)
    score = share * (1 - share)
    if reference is not None:
        score = score + 0.01 * (~right[reference])
    picked, classes = [], set()
    for i in np.argsort(-score, kind="stable"):
        if targets[i] in classes:
            continue
        picked.append(int(i))
        classes.add(int(targets[i]))
        if len(picked) == count:
            break
    return picked


__all__ = ["EXPLAINED", "test_outcomes", "analyze", "pick_explained", "machine", "row_record"]
