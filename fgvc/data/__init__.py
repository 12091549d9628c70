"""Data: official-format readers, the synthetic generator, transforms and the image dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .dataset import ImageDataset, check_images, load_rgb
from .index import DatasetIndex, check_classes, stratified_split
from .readers import detect_dataset, list_datasets, open_dataset
from .record import Record
from .synthetic import ensure_synthetic
from .table import RecordTable


def build_index(cfg: DataConfig, progress: bool = False, cache: Optional[Path] = None) -> DatasetIndex:
    """Opens the dataset a config names; ``synthetic`` with no root generates (and caches) one.

    With ``cache`` (a run's ``index/`` folder) the index is mapped from there while it is current
    (:mod:`fgvc.data.cache`), else read and written there."""
    from .cache import cache_key, load_index, save_index

    key = cache_key(cfg) if cache is not None else None
    if cache is not None:
        index = load_index(cache, key)
        if index is not None:
            return index
    if cfg.dataset == "synthetic":
        root = cfg.root
        if not root:
            s = cfg.synthetic
            root = ensure_synthetic(s.classes, s.train_per_class, s.test_per_class, s.size, s.seed,
                                    progress=progress)
        index = open_dataset("cub", root)
        index.name = "synthetic"
        index.expected, index.expected_classes = {}, None
    else:
        index = open_dataset(cfg.dataset, cfg.root, **cfg.options)
    index = index.first_classes(cfg.max_classes) if cfg.max_classes else index
    if cache is not None:
        save_index(index, cache, key)
    return index


@dataclass
class Splits:
    """The records a run trains, validates and tests on (record tables: sequences of records)."""

    train: RecordTable
    val: RecordTable
    test: RecordTable


def make_splits(index: DatasetIndex, cfg: DataConfig, seed: int) -> Splits:
    """Applies the honest protocol: train (minus a seeded, stratified validation part) and a fixed test."""
    train = index.select(cfg.train_splits or index.train_splits)
    test = index.select(cfg.test_splits or index.test_splits)
    small, large = (train, test) if len(train) <= len(test) else (test, train)
    seen = {small.path(i) for i in range(len(small))}
    overlap = [p for p in (large.path(i) for i in range(len(large))) if p in seen]
    if overlap:
        raise DataError(f"{len(overlap)} image(s) are in both the training and the test split, "
                        f"e.g. {sorted(overlap)[0]}")
    check_classes(index, train, test)
    val = train.take(np.zeros(0, dtype=np.int64))
    if cfg.val_fraction > 0:
        counts = np.bincount(train.labels, minlength=index.num_classes)
        alone = np.nonzero(counts == 1)[0]
        if len(alone):
            raise DataError(f"data.val_fraction={cfg.val_fraction:g}: {len(alone)} class(es) have a single training "
                            f"image, which cannot be both trained and validated on (e.g. "
                            f"'{index.class_names[alone[0]]}'); every class needs at least two")
        tr, va = stratified_split(train, cfg.val_fraction, seed)
        train, val = train.take(np.asarray(tr, dtype=np.int64)), train.take(np.asarray(va, dtype=np.int64))
    return Splits(train=train, val=val, test=test)


__all__ = ["DatasetIndex", "Record", "ImageDataset", "Splits", "build_index", "make_splits", "check_images",
           "load_rgb", "open_dataset", "list_datasets", "detect_dataset", "ensure_synthetic", "check_classes"]
