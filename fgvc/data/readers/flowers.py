"""Oxford Flowers-102 (102 classes; train 1,020 / val 1,020 / test 6,149).

Files: ``jpg/image_XXXXX.jpg``, ``imagelabels.mat`` (``labels``, 1-based, one per image in file order)
and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image numbers). FGVC papers train on
train+val, which is the default here. The official archive has no class-name file, so classes are named
by their number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..index import DatasetIndex
from ..record import Record
from ._text import check_files_exist, find_root, load_mat
from .registry import register_reader


@register_reader("flowers", "flowers102", description="Oxford Flowers-102 (jpg/, imagelabels.mat, setid.mat)")
def read_flowers(root: Path) -> DatasetIndex:
    """Oxford Flowers-102."""
    base = find_root(root, "imagelabels.mat", ["flowers-102", "flowers102"])
    lab_path, set_path = base / "imagelabels.mat", base / "setid.mat"
    labels = np.atleast_1d(load_mat(lab_path).get("labels", np.array([]))).astype(int)
    if labels.size == 0:
        raise DataError(f"{lab_path}: no 'labels' variable")
    sets = load_mat(set_path)
    records, owner = [], {}
    num = int(labels.max())
    if labels.min() < 1:
        raise DataError(f"{lab_path}: label {labels.min()} out of range (labels are 1-based)")
    for split, var in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        if var not in sets:
            raise DataError(f"{set_path}: no '{var}' variable")
        for n in np.atleast_1d(sets[var]).astype(int):
            if not 1 <= n <= labels.size:
                raise DataError(f"{set_path}: {var} lists image {n}, but {lab_path} has {labels.size} labels")
            if n in owner:
                raise DataError(f"{set_path}: image {n} is in both {owner[n]} and {var}")
            owner[n] = var
            records.append(Record(path=str(base / "jpg" / f"image_{n:05d}.jpg"), label=int(labels[n - 1]) - 1,
                                  split=split))
    check_files_exist((Path(r.path), str(set_path)) for r in records)
    return DatasetIndex(name="flowers", root=str(base), records=records,
                        class_names=[f"flower_{i:03d}" for i in range(1, num + 1)],
                        class_ids=[str(i) for i in range(1, num + 1)],
                        train_splits=("train", "val"), test_splits=("test",),
                        expected={"train": 1020, "val": 1020, "test": 6149}, expected_classes=102)
