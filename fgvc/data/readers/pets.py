"""Oxford-IIIT Pets (37 breeds; trainval 3,680 / test 3,669).

Files: ``images/<Name>_<n>.jpg``, ``annotations/trainval.txt`` and ``annotations/test.txt``
(``name class-id species breed-id``, 1-based class ids, ``#`` comment lines). Head boxes, optional, come
from ``annotations/xmls/<name>.xml`` (not every image has one).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..index import DatasetIndex
from ..record import Record
from ._text import check_files_exist, find_root, parse, read_rows
from .dogs import read_voc_boxes
from .registry import register_reader


@register_reader("pets", "oxford_pets", description="Oxford-IIIT Pets (images/, annotations/trainval.txt, test.txt)")
def read_pets(root: Path, boxes: bool = False) -> DatasetIndex:
    """Oxford-IIIT Pets.

    Args:
        root: The folder holding ``images/`` and ``annotations/``.
        boxes: Also read the head boxes from ``annotations/xmls``.
    """
    base = find_root(root, "annotations/trainval.txt", ["oxford-iiit-pet"])
    names: dict[int, str] = {}
    records, seen, to_check = [], {}, []
    for split, fname in (("trainval", "trainval.txt"), ("test", "test.txt")):
        path = base / "annotations" / fname
        for lineno, f in read_rows(path, 4, comment="#"):
            name = f[0]
            cid = parse(f[1], int, path, lineno, "class id")
            if cid < 1:
                raise DataError(f"{path}:{lineno}: class id {cid} out of range (ids are 1-based)")
            if name in seen:
                raise DataError(f"{path}:{lineno}: image {name} is already listed at {seen[name]}")
            seen[name] = f"{fname}:{lineno}"
            breed = name.rsplit("_", 1)[0]
            if names.setdefault(cid, breed) != breed:
                raise DataError(f"{path}:{lineno}: class id {cid} is used for {names[cid]} and {breed}")
            p = base / "images" / f"{name}.jpg"
            to_check.append((p, f"{path}:{lineno}"))
            records.append(Record(path=str(p), label=cid - 1, split=split,
                                  extra={"species": "cat" if f[2] == "1" else "dog"}))
    num = max(names)
    if sorted(names) != list(range(1, num + 1)):
        raise DataError(f"{base / 'annotations'}: class ids are not contiguous 1..{num}")
    check_files_exist(to_check)
    if boxes:
        read_voc_boxes(records, lambda r: base / "annotations" / "xmls" / (Path(r.path).stem + ".xml"))
    return DatasetIndex(name="pets", root=str(base), records=records,
                        class_names=[names[i] for i in range(1, num + 1)],
                        class_ids=[str(i) for i in range(1, num + 1)],
                        train_splits=("trainval",), test_splits=("test",),
                        expected={"trainval": 3680, "test": 3669}, expected_classes=37)
