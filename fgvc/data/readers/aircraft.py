"""FGVC-Aircraft (100 variants / 70 families / 30 manufacturers; trainval 6,667 / test 3,333).

Files under ``data/``: ``images/<id>.jpg``, ``variants.txt`` (also ``families.txt``,
``manufacturers.txt``), ``images_<level>_{train,val,test}.txt`` (``id name``, names contain spaces) and
``images_box.txt`` (``id xmin ymin xmax ymax``). Every image carries a 20-pixel copyright banner at the
bottom; fgvc crops it off by default (``crop_banner``), as is common practice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ...errors import DataError
from ..index import DatasetIndex
from ..record import Record
from ._text import check_files_exist, find_root, parse, read_rows, require
from .registry import register_reader

_NAMES_FILE = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}
BANNER_PIXELS = 20


@register_reader("aircraft", "fgvc_aircraft", description="FGVC-Aircraft (data/images_<level>_<split>.txt)")
def read_aircraft(root: Path, level: Literal["variant", "family", "manufacturer"] = "variant",
                  crop_banner: bool = True) -> DatasetIndex:
    """FGVC-Aircraft at one annotation level.

    Args:
        root: The archive root (``fgvc-aircraft-2013b``) or its ``data`` folder.
        level: ``variant`` (100 classes), ``family`` (70) or ``manufacturer`` (30).
        crop_banner: Cut the 20-pixel copyright banner off the bottom of every image.
    """
    base = find_root(root, "images", ["data", "fgvc-aircraft-2013b/data"])
    names_path = require(base / _NAMES_FILE[level])
    names = [line.strip() for line in names_path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{names_path}: a class name is listed twice")
    label_of = {n: i for i, n in enumerate(names)}
    boxes = {}
    box_path = base / "images_box.txt"
    if box_path.is_file():
        for lineno, f in read_rows(box_path, 5):
            x1, y1, x2, y2 = (parse(v, float, box_path, lineno, "box value") for v in f[1:5])
            boxes[f[0]] = (x1, y1, x2 - x1 + 1, y2 - y1 + 1)
    records, seen, to_check = [], {}, []
    for split in ("train", "val", "test"):
        path = base / f"images_{level}_{split}.txt"
        for lineno, (img, cls) in read_rows(require(path), 2, max_split=1):
            if cls not in label_of:
                raise DataError(f"{path}:{lineno}: class '{cls}' is not in {names_path}")
            if img in seen:
                raise DataError(f"{path}:{lineno}: image {img} is already listed in {seen[img]}")
            seen[img] = f"{path.name}:{lineno}"
            p = base / "images" / f"{img}.jpg"
            to_check.append((p, f"{path}:{lineno}"))
            records.append(Record(path=str(p), label=label_of[cls], split=split, box=boxes.get(img),
                                  crop_bottom=BANNER_PIXELS if crop_banner else 0, extra={"image_id": img}))
    check_files_exist(to_check)
    notes = [f"the {BANNER_PIXELS}-px copyright banner is cropped off every image (data.options.crop_banner=false "
             "keeps it)"] if crop_banner else []
    expected_classes = {"variant": 100, "family": 70, "manufacturer": 30}[level]
    return DatasetIndex(name="aircraft", root=str(base), records=records, class_names=names, class_ids=names,
                        train_splits=("train", "val"), test_splits=("test",),
                        expected={"train": 3334, "val": 3333, "test": 3333}, expected_classes=expected_classes,
                        notes=notes)
