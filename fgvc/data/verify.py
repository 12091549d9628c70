"""``fgvc data verify``: read a dataset, compare its counts with the official ones, decode every image."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .dataset import check_images
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
        out.append("verdict: " + ("as expected" if self.ok else
                                  "differs from the official counts or has unreadable images"))
        return out


def verify_dataset(root: str | Path, name: str, options: Optional[dict[str, Any]] = None, decode: bool = True,
                   workers: int = 8, progress: Optional[Callable[[int], None]] = None) -> VerifyReport:
    """Reads a dataset with the reader ``name`` and checks it (see the module docstring)."""
    index = open_dataset("cub" if name == "synthetic" else name, root, **(options or {}))
    counts = Counter(r.split for r in index.records)
    splits = {s: (n, index.expected.get(s)) for s, n in counts.items()}
    ok = all(exp is None or exp == n for n, exp in splits.values())
    ok &= not (index.expected_classes and index.expected_classes != index.num_classes)
    per_class = Counter(r.label for r in index.records)
    has_boxes = index.records[0].box is not None
    report = VerifyReport(
        name=index.name, root=str(index.root), num_classes=index.num_classes, expected_classes=index.expected_classes,
        splits=splits, per_class=(min(per_class.values()), max(per_class.values())),
        empty_classes=index.num_classes - len(per_class),
        boxes=(sum(r.box is not None for r in index.records), sum(r.parts is not None for r in index.records))
        if has_boxes else None, part_names=list(index.part_names), notes=list(index.notes))
    if decode:
        report.unreadable = check_images(index.records, workers=workers, progress=progress)
        ok &= not report.unreadable
    report.ok = bool(ok)
    return report
