"""Data: official-format readers, the synthetic generator, transforms and the image dataset."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DataConfig
from ..errors import DataError
from .dataset import ImageDataset, check_images, load_rgb
from .readers import list_datasets, open_dataset
from .records import DatasetIndex, Record, stratified_split
from .synthetic import ensure_synthetic


def build_index(cfg: DataConfig, progress: bool = False) -> DatasetIndex:
    """Opens the dataset a config names; ``synthetic`` with no root generates (and caches) one."""
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
    return index.first_classes(cfg.max_classes) if cfg.max_classes else index


@dataclass
class Splits:
    """The records a run trains, validates and tests on."""

    train: list[Record]
    val: list[Record]
    test: list[Record]


def make_splits(index: DatasetIndex, cfg: DataConfig, seed: int) -> Splits:
    """Applies the honest protocol: train (minus a seeded, stratified validation part) and a fixed test."""
    train = index.select(cfg.train_splits or index.train_splits)
    test = index.select(cfg.test_splits or index.test_splits)
    overlap = {r.path for r in train} & {r.path for r in test}
    if overlap:
        raise DataError(f"{len(overlap)} image(s) are in both the training and the test split, "
                        f"e.g. {sorted(overlap)[0]}")
    val: list[Record] = []
    if cfg.val_fraction > 0:
        tr, va = stratified_split(train, cfg.val_fraction, seed)
        train, val = [train[i] for i in tr], [train[i] for i in va]
    return Splits(train=train, val=val, test=test)


__all__ = ["DatasetIndex", "Record", "ImageDataset", "Splits", "build_index", "make_splits", "check_images",
           "load_rgb", "open_dataset", "list_datasets", "ensure_synthetic"]
