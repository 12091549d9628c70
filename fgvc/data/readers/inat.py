"""iNaturalist 2017, 2018 and 2021 (COCO-like JSON).

Files: ``train2017.json``/``val2017.json``, ``train2018.json``/``val2018.json`` or ``train.json``/``val.json``
(2021; ``train_mini.json`` with ``train_file``). Each holds ``images`` (id, file_name relative to the
root), ``annotations`` (image_id, category_id) and ``categories`` (id, name, supercategory; 2021 adds the
taxonomy levels, 2018 ships them in ``categories.json``). The official test sets have no labels, so the
validation set is the test split, as in the papers.
"""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from ...errors import DataError
from ..index import DatasetIndex
from ..table import Column, RecordTable, Strings
from ._json import iter_arrays
from ._text import check_files_exist, require
from .registry import register_reader

_FILES = {"2017": ("train2017.json", "val2017.json"), "2018": ("train2018.json", "val2018.json"),
          "2021": ("train.json", "val.json")}
_EXPECTED = {"2017": ({"train": 579184, "val": 95986}, 5089), "2018": ({"train": 437513, "val": 24426}, 8142),
             "2021": ({"train": 2686843, "val": 100000}, 10000)}
_TAXONOMY = ("kingdom", "phylum", "class", "order", "family", "genus")


def _read_json(path: Path, cats: dict) -> dict:
    """One split's images and annotations as arrays, streamed (bounded memory; fgvc/data/readers/_json.py);
    its categories go into ``cats``."""
    require(path)
    ids, names, offsets = array("q"), bytearray(), array("q", [0])
    other_ids: list = []  # image ids that are not integers (never in the official files)
    ann_img, ann_cat = array("q"), array("q")
    ann_img_other: list = []
    seen = set()
    for key, item in iter_arrays(path, {"images", "annotations", "categories"}):
        seen.add(key)
        try:
            if key == "images":
                (ids.append(item["id"]) if isinstance(item["id"], int) else other_ids.append(item["id"]))
                names += item["file_name"].encode()
                offsets.append(len(names))
            elif key == "annotations":
                img = item.get("image_id")
                if isinstance(img, int):
                    ann_img.append(img)
                else:
                    ann_img_other.append(img)
                ann_cat.append(item.get("category_id"))
            else:
                cats[item["id"]] = item
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: a '{key}' entry lacks or mistypes {e} ({str(item)[:120]})") from None
    for key in ("images", "annotations"):
        if key not in seen:
            raise DataError(f"{path}: no '{key}' list")
    if other_ids or ann_img_other:  # ids of another type: numbered in order of appearance
        every = list(ids) + other_ids
        number = {v: i for i, v in enumerate(dict.fromkeys(every))}
        ids = array("q", [number[v] for v in every])
        ann_img = array("q", [number.get(v, -1) for v in list(ann_img) + ann_img_other])
    return {"ids": np.frombuffer(ids, dtype=np.int64), "names": np.frombuffer(bytes(names), dtype=np.uint8),
            "offsets": np.frombuffer(offsets, dtype=np.int64), "ann_img": np.frombuffer(ann_img, dtype=np.int64),
            "ann_cat": np.frombuffer(ann_cat, dtype=np.int64)}


def _rows(split: dict, path: Path) -> np.ndarray:
    """The image row of every annotation; an unknown or twice-annotated image id is an error naming it."""
    order = np.argsort(split["ids"], kind="stable")
    ids = split["ids"][order]
    pos = np.searchsorted(ids, split["ann_img"])
    found = (pos < len(ids)) & (ids[np.minimum(pos, max(len(ids) - 1, 0))] == split["ann_img"]) if len(ids) else \
        np.zeros(len(pos), bool)
    if not found.all():
        i = int(np.argmin(found))
        raise DataError(f"{path}: annotation {i} names image id {int(split['ann_img'][i])}, which is not in 'images'")
    values, first, counts = np.unique(split["ann_img"], return_index=True, return_counts=True)
    if (counts > 1).any():
        img = values[counts > 1][np.argmin(first[counts > 1])]
        raise DataError(f"{path}: image id {int(img)} has two annotations")
    return order[pos]


@register_reader("inat", "inaturalist", description="iNaturalist 2017/2018/2021 (train*.json, val*.json)")
def read_inat(root: Path, version: Literal["auto", "2017", "2018", "2021"] = "auto",
              train_file: Optional[str] = None, check_files: bool = True) -> DatasetIndex:
    """iNaturalist, read in bounded memory (the JSON files streamed into columns).

    Args:
        root: The folder holding the JSON files and the image folders they name.
        version: Which release; ``auto`` looks for the JSON file names.
        train_file: Another training JSON (``train_mini.json`` for 2021).
        check_files: Check at open that every listed image exists (hundreds of thousands of stat calls).
    """
    if version == "auto":
        version = next((v for v, (t, _) in _FILES.items() if (root / t).is_file()), "")
        if not version:
            raise DataError(f"{root} does not look like iNaturalist: none of "
                            f"{', '.join(t for t, _ in _FILES.values())} exists")
    train_name, val_name = _FILES[version]
    train_path, val_path = root / (train_file or train_name), root / val_name
    cats: dict = {}
    train, val = _read_json(train_path, cats), _read_json(val_path, cats)
    sources = [str(train_path), str(val_path)]
    if (root / "categories.json").is_file():  # iNat 2018 keeps names and taxonomy apart
        cats.update({c["id"]: c for c in json.loads((root / "categories.json").read_text())})
        sources.append(str(root / "categories.json"))
    used = np.unique(train["ann_cat"])
    if not len(used):
        raise DataError(f"{train_path}: no annotations")
    parts, labels, codes = [], [], []
    for code, (split, path) in enumerate(((train, train_path), (val, val_path))):
        rows = _rows(split, path)
        pos = np.searchsorted(used, split["ann_cat"])
        known = (pos < len(used)) & (used[np.minimum(pos, len(used) - 1)] == split["ann_cat"])
        if not known.all():
            i = int(np.argmin(known))
            raise DataError(f"{path}: annotation {i}: category {int(split['ann_cat'][i])} has no training image "
                            f"(out of range for the {len(used)} training classes)")
        parts.append((Strings(split["names"], split["offsets"], str(root) + "/").take(rows), split["ids"][rows]))
        labels.append(pos)
        codes.append(np.full(len(rows), code, dtype=np.int16))
    paths = Strings(np.concatenate([p.buffer for p, _ in parts]),
                    np.concatenate([parts[0][0].offsets, parts[1][0].offsets[1:] + parts[0][0].offsets[-1]]),
                    str(root) + "/")
    label = np.concatenate(labels).astype(np.int64)
    extras = {"image_id": Column(np.concatenate([ids for _, ids in parts]))}
    for k in ("supercategory", *_TAXONOMY):  # class-level annotations, one code per class
        values = [cats.get(int(c), {}).get(k) for c in used]
        if any(v is not None for v in values):
            column = Column.from_values(values, np.array([v is not None for v in values]))
            extras[k] = Column(column.data[label], column.values)
    table = RecordTable(paths, label, np.concatenate(codes), ["train", "val"], extras=extras)
    if check_files:
        check_files_exist((Path(table.path(i)), f"{root}/{table.split(i)} json") for i in range(len(table)))
    expected, n_classes = _EXPECTED[version]
    return DatasetIndex(name="inat", root=str(root), records=table,
                        class_names=[str(cats.get(int(c), {}).get("name", int(c))) for c in used],
                        class_ids=[str(int(c)) for c in used], train_splits=("train",), test_splits=("val",),
                        expected={} if train_file else expected, expected_classes=n_classes,
                        notes=[f"iNaturalist {version}: the validation set is the test split"], sources=sources)
