"""iNaturalist 2017, 2018 and 2021 (COCO-like JSON).

Files: ``train2017.json``/``val2017.json``, ``train2018.json``/``val2018.json`` or ``train.json``/``val.json``
(2021; ``train_mini.json`` with ``train_file``). Each holds ``images`` (id, file_name relative to the
root), ``annotations`` (image_id, category_id) and ``categories`` (id, name, supercategory; 2021 adds the
taxonomy levels, 2018 ships them in ``categories.json``). The official test sets have no labels, so the
validation set is the test split, as in the papers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from ...errors import DataError
from ..records import DatasetIndex, Record
from .registry import register_reader
from ._text import check_files_exist, require

_FILES = {"2017": ("train2017.json", "val2017.json"), "2018": ("train2018.json", "val2018.json"),
          "2021": ("train.json", "val.json")}
_EXPECTED = {"2017": ({"train": 579184, "val": 95986}, 5089), "2018": ({"train": 437513, "val": 24426}, 8142),
             "2021": ({"train": 2686843, "val": 100000}, 10000)}
_TAXONOMY = ("kingdom", "phylum", "class", "order", "family", "genus")


def _load(path: Path) -> dict:
    require(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    for key in ("images", "annotations"):
        if key not in data:
            raise DataError(f"{path}: no '{key}' list")
    return data


@register_reader("inat", "inaturalist", description="iNaturalist 2017/2018/2021 (train*.json, val*.json)")
def read_inat(root: Path, version: Literal["auto", "2017", "2018", "2021"] = "auto",
              train_file: Optional[str] = None, check_files: bool = True) -> DatasetIndex:
    """iNaturalist.

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
    train = _load(root / (train_file or train_name))
    val = _load(root / val_name)
    cats = {c["id"]: c for c in train.get("categories", []) + val.get("categories", [])}
    if (root / "categories.json").is_file():  # iNat 2018 keeps names and taxonomy apart
        cats.update({c["id"]: c for c in json.loads((root / "categories.json").read_text())})
    used = sorted({a["category_id"] for a in train["annotations"]})
    if not used:
        raise DataError(f"{root / (train_file or train_name)}: no annotations")
    label_of = {cid: i for i, cid in enumerate(used)}
    records = []
    for split, data, fname in (("train", train, train_file or train_name), ("val", val, val_name)):
        files = {img["id"]: img["file_name"] for img in data["images"]}
        seen = set()
        for i, ann in enumerate(data["annotations"]):
            img, cid = ann.get("image_id"), ann.get("category_id")
            if img not in files:
                raise DataError(f"{root / fname}: annotation {i} names image id {img}, which is not in 'images'")
            if img in seen:
                raise DataError(f"{root / fname}: image id {img} has two annotations")
            seen.add(img)
            if cid not in label_of:
                raise DataError(f"{root / fname}: annotation {i}: category {cid} has no training image "
                                f"(out of range for the {len(used)} training classes)")
            c = cats.get(cid, {})
            extra = {"image_id": img, **{k: c[k] for k in ("supercategory", *_TAXONOMY) if k in c}}
            records.append(Record(path=str(root / files[img]), label=label_of[cid], split=split, extra=extra))
    if check_files:
        check_files_exist((Path(r.path), f"{root}/{r.split} json") for r in records)
    expected, n_classes = _EXPECTED[version]
    return DatasetIndex(name="inat", root=str(root), records=records,
                        class_names=[str(cats.get(c, {}).get("name", c)) for c in used],
                        class_ids=[str(c) for c in used], train_splits=("train",), test_splits=("val",),
                        expected={} if train_file else expected, expected_classes=n_classes,
                        notes=[f"iNaturalist {version}: the validation set is the test split"])
