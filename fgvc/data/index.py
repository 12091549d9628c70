"""What every reader returns: one :class:`Record` per image inside a :class:`DatasetIndex`.

Labels are contiguous ``0..K-1``; the dataset's own class ids are kept in ``DatasetIndex.class_ids`` so
that predictions print the dataset's names and a checkpoint can be matched to its dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DataError
from .record import Record
from .table import RecordTable


@dataclass
class DatasetIndex:
    """Everything a reader found: the records, the class names and the official split names.

    Attributes:
        name: Reader name (``cub``, ``cars``, ...).
        root: The dataset root that was read.
        records: One record per image, every split: a :class:`~fgvc.data.table.RecordTable` (a readers' list of
            :class:`Record` becomes one), which is a sequence of records.
        class_names: ``class_names[label]`` is the dataset's own name of the class.
        class_ids: ``class_ids[label]`` is the dataset's own id of the class (as a string).
        train_splits: The official training splits (FGVC papers train on train+val where both exist).
        test_splits: The official test split.
        expected: Official image counts per split, for ``fgvc data verify``.
        part_names: Names of the parts in ``Record.parts``, where the dataset has them.
        notes: Things the reader noticed and the user should know (renamed mirrors, cropped banners).
        sources: The annotation files the reader read: an index cache is reused only while they are unchanged.
    """

    name: str
    root: str
    records: RecordTable
    class_names: list[str]
    class_ids: list[str]
    train_splits: tuple[str, ...] = ("train",)
    test_splits: tuple[str, ...] = ("test",)
    expected: dict[str, int] = field(default_factory=dict)
    expected_classes: Optional[int] = None
    part_names: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.records, RecordTable):
            self.records = RecordTable.from_records(self.records)
        self._fingerprint: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def select(self, splits: Sequence[str]) -> RecordTable:
        """The records of the given splits, in reader order."""
        present = self.records.present_splits()
        if not set(splits) & set(present):
            hint = ("; a folder without split folders (train/, test/) gets a seeded, stratified test split with "
                    "data.options.test_fraction=0.2") if self.name in ("folder", "csv") else ""
            raise DataError(f"{self.name}: no images in split(s) {sorted(set(splits) - set(present))}; "
                            f"this dataset has {sorted(present)}{hint}")
        return self.records.take(np.nonzero(self.records.split_mask(splits))[0])

    def first_classes(self, n: int) -> "DatasetIndex":
        """The same dataset restricted to its first ``n`` classes (labels ``0..n-1``, every split): a quick look
        at a large dataset. The note says so wherever the run is described."""
        if n < 1:
            raise DataError(f"data.max_classes must be at least 1, got {n}")
        if n >= self.num_classes:
            return self
        records = self.records.take(np.nonzero(self.records.labels < n)[0])
        expected = {}  # the official counts no longer apply
        return dataclasses.replace(self, records=records, class_names=self.class_names[:n],
                                   class_ids=self.class_ids[:n], expected=expected, expected_classes=None,
                                   notes=self.notes + [f"the first {n} of {self.num_classes} classes only "
                                                       f"(data.max_classes={n})"])

    def fingerprint(self) -> str:
        """A short hash of (path relative to the root, label, split) over all records, in order: identifies the
        dataset in checkpoints. Computed once, from the columns (no record objects)."""
        if self._fingerprint is None:
            self._fingerprint = table_fingerprint(self.records, self.root)
        return self._fingerprint


def table_fingerprint(table: RecordTable, root: str) -> str:
    """sha256 of ``"{relative path}\t{label}\t{split}\n"`` for every record, first 16 hex digits (a path outside
    ``root`` counts whole)."""
    h = hashlib.sha256()
    under = str(Path(root)) + "/"
    prefix = table.paths.prefix
    rel_prefix = prefix[len(under):].encode() if prefix.startswith(under) else None
    splits = [f"\t{s}\n".encode() for s in table.split_names]
    labels = table.labels.tolist()
    codes = table.split_codes.tolist()
    label_text: dict[int, bytes] = {}
    chunk: list[bytes] = []
    for i in range(len(table)):
        if rel_prefix is not None:
            rel = rel_prefix + table.paths.raw(i)
        else:
            path = table.paths[i]
            rel = (path[len(under):] if path.startswith(under) else path).encode()
        lab = label_text.get(labels[i])
        if lab is None:
            lab = label_text[labels[i]] = f"\t{labels[i]}".encode()
        chunk.append(rel + lab + splits[codes[i]])
        if len(chunk) >= 65536:
            h.update(b"".join(chunk))
            chunk = []
    h.update(b"".join(chunk))
    return h.hexdigest()[:16]


def contiguous_labels(ids: Sequence[str], source: str) -> dict[str, int]:
    """Maps dataset class ids (in the given order) to ``0..K-1``; duplicates are an error."""
    out: dict[str, int] = {}
    for i in ids:
        if i in out:
            raise DataError(f"{source}: class id {i} is listed twice")
        out[i] = len(out)
    return out


def check_classes(index: DatasetIndex, train: RecordTable, test: RecordTable) -> None:
    """A classifier needs at least two classes to learn, and a test class it never saw is one it cannot get right.

    Raises:
        DataError: Fewer than two classes with training images, or test classes without any.
    """
    trained = np.unique(train.labels)
    if len(trained) < 2:
        named = f" ('{index.class_names[trained[0]]}')" if len(trained) else ""
        raise DataError(f"{index.name}: the training split holds images of {len(trained)} class{named}; a "
                        "classifier needs at least two classes")
    missing = np.setdiff1d(np.unique(test.labels), trained)
    if len(missing):
        raise DataError(f"{index.name}: {len(missing)} class(es) of the test split have no training image (e.g. "
                        f"'{index.class_names[missing[0]]}'); give each at least one, or leave them out of the test "
                        "split")


def stratified_split(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded, stratified split of ``records`` into (train, val) index lists.

    Each class keeps ``round(fraction * n_c)`` of its images for validation (at least one when the class
    has two or more), drawn with a generator seeded by ``seed``, so the same seed gives the same split.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {fraction}")
    labels = records.labels if isinstance(records, RecordTable) else np.array([r.label for r in records], dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")  # each class's indices, ascending, class after class
    classes, starts = np.unique(labels[order], return_index=True)
    bounds = list(starts) + [len(order)]
    train, val = [], []
    for c in range(len(classes)):
        idx = order[bounds[c]:bounds[c + 1]].copy()
        rng.shuffle(idx)
        n_val = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)
