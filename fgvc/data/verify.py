"""``fgvc data verify``: read a dataset, compare its counts with the official ones, decode every image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import DataError
from ..progress import progress_bar
from .dataset import check_images
from .index import check_classes
from .readers import open_dataset


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found; ``ok`` when the counts are the official ones and every image reads."""

    name: str
    root: str
    num_classes: int
    expected_classes: Optional[int]
    splits: dict[str, tuple[int, Optional[int]]]  # split -> (found, expected)
    per_class: tuple[int, int]  # fewest and most images in a class
    empty_classes: int
    boxes: Optional[tuple[int, int]]  # images with a box, with parts
    part_names: list[str]
    notes: list[str]
    unreadable: Optional[list[tuple[int, str, str]]] = None  # None: images not decoded
    problems: list[str] = field(default_factory=list)  # what makes the dataset unusable for training
    ok: bool = True

    def describe(self) -> list[str]:
        """The report as lines of text (what the command prints)."""
        out = [f"{self.name} at {self.root}: {self.num_classes} classes"
               + (f" (expected {self.expected_classes})" if self.expected_classes else "")]
        for split, (n, exp) in sorted(self.splits.items()):
            mark = "" if exp is None else (" ok" if exp == n else f" (expected {exp})")
            out.append(f"  {split}: {n} images{mark}")
        out.append(f"  images per class: {self.per_class[0]}..{self.per_class[1]}; classes without images: "
                   f"{self.empty_classes}")
        if self.boxes is not None:
            out.append(f"  boxes: {self.boxes[0]}; parts: {self.boxes[1]} ({', '.join(self.part_names) or '-'})")
        out += [f"  note: {n}" for n in self.notes]
        if self.unreadable is not None:
            out.append(f"  unreadable images: {len(self.unreadable)}")
            out += [f"    {path} (index {i}): {why}" for i, path, why in self.unreadable]
        out += [f"  problem: {p}" for p in self.problems]
        out.append("verdict: " + ("as expected" if self.ok else
                                  "cannot be trained as it is" if self.problems else
                                  "differs from the official counts or has unreadable images"))
        return out


def verify_dataset(root: str | Path, name: str, options: Optional[dict[str, Any]] = None, decode: bool = True,
                   workers: int = 8, progress: bool = False) -> VerifyReport:
    """Reads a dataset with the reader ``name`` and checks it (see the module docstring); ``progress`` draws a bar
    of the decoding on a terminal."""
    index = open_dataset("cub" if name == "synthetic" else name, root, **(options or {}))
    t = index.records
    codes, counts = np.unique(t.split_codes, return_counts=True)
    splits = {t.split_names[c]: (int(n), index.expected.get(t.split_names[c])) for c, n in zip(codes, counts)}
    ok = all(exp is None or exp == n for n, exp in splits.values())
    ok &= not (index.expected_classes and index.expected_classes != index.num_classes)
    per_class = np.bincount(t.labels, minlength=index.num_classes)
    present = per_class[per_class > 0]
    has_boxes = t.boxes is not None and not np.isnan(t.boxes[0, 0])
    boxes = None
    if has_boxes:
        with_parts = 0 if t.parts is None else int((~np.isnan(t.parts).all(axis=(1, 2))).sum())
        boxes = (int((~np.isnan(t.boxes[:, 0])).sum()), with_parts)
    report = VerifyReport(
        name=index.name, root=str(index.root), num_classes=index.num_classes, expected_classes=index.expected_classes,
        splits=splits, per_class=(int(present.min()), int(present.max())),
        empty_classes=int((per_class == 0).sum()), boxes=boxes, part_names=list(index.part_names),
        notes=list(index.notes))
    try:
        check_classes(index, index.select(index.train_splits), index.select(index.test_splits))
    except DataError as e:
        report.problems.append(str(e).removeprefix(f"{index.name}: "))
        ok = False
    if decode:
        with progress_bar(total=len(index.records), desc="decoding", unit="img", leave=False,
                          enabled=progress) as bar:
            report.unreadable = check_images(index.records, workers=workers, progress=bar.update)
        ok &= not report.unreadable
    report.ok = bool(ok)
    return report
