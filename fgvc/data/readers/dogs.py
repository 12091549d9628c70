"""Stanford Dogs (120 classes, 12,000 train / 8,580 test).

Files: ``Images/nXXXXXXXX-Name/*.jpg``, ``train_list.mat`` and ``test_list.mat`` (``file_list`` relative
to ``Images/`` and ``labels``, 1-based). Boxes, optional because reading 20,580 XML files takes a while,
come from ``Annotation/nXXXXXXXX-Name/<image name without .jpg>`` (Pascal VOC XML; the first object).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from ...errors import DataError
from ..index import DatasetIndex
from ..record import Record
from ._text import check_files_exist, find_root, load_mat
from .registry import register_reader


def _voc_box(path: Path) -> Optional[tuple[float, float, float, float]]:
    if not path.is_file():
        return None
    try:
        node = ET.parse(path).getroot().find("object/bndbox")
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None
    if node is None:
        return None
    x1, y1, x2, y2 = (float(node.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    return (x1, y1, x2 - x1, y2 - y1)


def read_voc_boxes(records: list[Record], annotation_path) -> None:
    """Sets ``Record.box`` from the Pascal VOC XML that ``annotation_path(record)`` names."""
    for r in records:
        r.box = _voc_box(annotation_path(r))


@register_reader("dogs", "stanford_dogs", description="Stanford Dogs (Images/, train_list.mat, test_list.mat)")
def read_dogs(root: Path, boxes: bool = False) -> DatasetIndex:
    """Stanford Dogs.

    Args:
        root: The folder holding ``Images/`` and the two list files.
        boxes: Also read the XML boxes from ``Annotation/``.
    """
    base = find_root(root, "train_list.mat", ["StanfordDogs", "stanford_dogs"])
    folder_of_label: dict[int, str] = {}
    records = []
    for split, fname in (("train", "train_list.mat"), ("test", "test_list.mat")):
        path = base / fname
        mat = load_mat(path)
        for var in ("file_list", "labels"):
            if var not in mat:
                raise DataError(f"{path}: no '{var}' variable")
        files, labels = list(mat["file_list"]), [int(v) for v in list(mat["labels"])]
        if len(files) != len(labels):
            raise DataError(f"{path}: file_list has {len(files)} entries but labels has {len(labels)}")
        for i, (rel, label) in enumerate(zip(files, labels)):
            rel = str(rel)
            folder = rel.split("/", 1)[0]
            if label < 1:
                raise DataError(f"{path}: entry {i + 1} ({rel}): label {label} out of range (labels are 1-based)")
            known = folder_of_label.setdefault(label, folder)
            if known != folder:
                raise DataError(f"{path}: entry {i + 1} ({rel}): label {label} is also used for {known}")
            records.append(Record(path=str(base / "Images" / rel), label=label - 1, split=split))
    num = max(folder_of_label)
    if sorted(folder_of_label) != list(range(1, num + 1)):
        missing = sorted(set(range(1, num + 1)) - set(folder_of_label))
        raise DataError(f"{base}: labels are not contiguous, no image has label(s) {missing[:5]}")
    check_files_exist((Path(r.path), "train_list.mat/test_list.mat") for r in records)
    if boxes:
        read_voc_boxes(records, lambda r: base / "Annotation" / Path(r.path).parent.name / Path(r.path).stem)
    folders = [folder_of_label[i] for i in range(1, num + 1)]
    return DatasetIndex(name="dogs", root=str(base), records=records,
                        class_names=[f.split("-", 1)[1] if "-" in f else f for f in folders],
                        class_ids=[f.split("-", 1)[0] for f in folders],
                        expected={"train": 12000, "test": 8580}, expected_classes=120)
