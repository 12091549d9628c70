"""The records of a dataset held as columns of numpy arrays: what loader workers share without copying.

A list of Python objects is not shared by forked loader workers: reading an object writes its reference count,
so every page a worker touches is copied into it (about 0.3 KiB per record per worker; at iNaturalist 2021's
2.7M images, several GiB per training process). :class:`RecordTable` keeps the same records as a handful of
arrays, whose pages are only read: the paths as one UTF-8 byte buffer with offsets (relative to a common
prefix), the labels, a split code per record, boxes and parts where the dataset has them, the banner crop,
and the extra annotations as columns (numbers, or codes into a small list of distinct values). A worker's
private memory then does not grow with the number of records.

Why numpy and not Arrow: the columns are a few flat arrays that torch's loader, the split code and the cache
already speak (``np.save``/``np.load(mmap_mode="r")``); Arrow would add a dependency for the same layout.

It is a ``Sequence[Record]``: ``table[i]`` and iteration give :class:`~fgvc.data.record.Record` objects made on
demand, so every consumer of records keeps working; the hot paths (``path``, ``labels``, ``take``,
``select``) never make them. :meth:`save` and :meth:`load` write and map the columns as ``.npy`` files (the
index cache, :mod:`fgvc.data.cache`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from .record import Record

_TAKE_BLOCK = 1 << 16  # strings gathered at once by Strings.take


class Strings:
    """Many strings as one UTF-8 buffer and ``n + 1`` offsets (after a common ``prefix``)."""

    def __init__(self, buffer: np.ndarray, offsets: np.ndarray, prefix: str = ""):
        self.buffer, self.offsets, self.prefix = buffer, offsets, prefix

    @classmethod
    def from_list(cls, items: Sequence[str], prefix: Optional[str] = None) -> "Strings":
        if prefix is None:
            prefix = os.path.commonprefix(list(items)) if len(items) > 1 else ""
            prefix = prefix[: prefix.rfind("/") + 1]  # a whole folder, never half a name
        cut = len(prefix)
        encoded = [s[cut:].encode() for s in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets, prefix)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        """The ``i``-th string's bytes after the prefix."""
        return self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def __getitem__(self, i: int) -> str:
        return self.prefix + self.raw(i).decode()

    def take(self, idx: np.ndarray) -> "Strings":
        idx = np.asarray(idx, dtype=np.int64)
        n = len(self.offsets) - 1
        if len(idx) == n and (n == 0 or (idx[0] == 0 and np.all(np.diff(idx) == 1))):
            return Strings(self.buffer, self.offsets, self.prefix)  # every string in order: nothing to gather
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
        # the bytes of the kept strings, gathered a block of strings at a time (each byte's source is its string's
        # start plus its position inside it): the index arrays are 8 bytes a byte, so a block bounds their memory
        for a in range(0, len(idx), _TAKE_BLOCK):
            b = min(a + _TAKE_BLOCK, len(idx))
            lo, hi = int(offsets[a]), int(offsets[b])
            if hi > lo:
                within = np.arange(lo, hi, dtype=np.int64) - np.repeat(offsets[a:b], lengths[a:b])
                buffer[lo:hi] = self.buffer[np.repeat(starts[a:b], lengths[a:b]) + within]
        return Strings(buffer, offsets, self.prefix)


class Column:
    """One extra annotation over the records: numbers (``values`` per record, NaN where missing), or codes into a
    list of distinct values (``-1`` where missing)."""

    def __init__(self, data: np.ndarray, values: Optional[list] = None):
        self.data, self.values = data, values

    @classmethod
    def from_values(cls, items: list, present: np.ndarray) -> "Column":
        vals = [v for v, p in zip(items, present) if p]
        if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals) and present.all():
            return cls(np.asarray(items, dtype=np.int64))
        codes, distinct, seen = np.full(len(items), -1, dtype=np.int32), [], {}
        for i, (v, p) in enumerate(zip(items, present)):
            if not p:
                continue
            key = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (list, dict)) else (type(v).__name__, v)
            if key not in seen:
                seen[key] = len(distinct)
                distinct.append(v)
            codes[i] = seen[key]
        return cls(codes, distinct)

    def get(self, i: int) -> tuple[bool, Any]:
        if self.values is None:
            return True, int(self.data[i])
        c = int(self.data[i])
        return (c >= 0), (self.values[c] if c >= 0 else None)

    def take(self, idx: np.ndarray) -> "Column":
        return Column(self.data[idx], self.values)


class RecordTable(Sequence):
    """A dataset's records as columns (see the module docstring); a ``Sequence`` of ``Record``.

    Attributes:
        paths: The image files.
        labels: ``int64 [N]``.
        split_codes: ``int16 [N]`` into ``split_names``.
        boxes: ``float32 [N, 4]`` (x, y, w, h; NaN rows without a box), or None when no record has one.
        parts: ``float32 [N, P, 3]`` (NaN where a record has none), or None.
        crop_bottom: ``int32 [N]``, or None (no banner anywhere).
        extras: Name -> :class:`Column`.
    """

    def __init__(self, paths: Strings, labels: np.ndarray, split_codes: np.ndarray, split_names: Sequence[str],
                 boxes: Optional[np.ndarray] = None, parts: Optional[np.ndarray] = None,
                 crop_bottom: Optional[np.ndarray] = None, extras: Optional[dict[str, Column]] = None):
        self.paths, self.labels, self.split_codes = paths, labels, split_codes
        self.split_names = list(split_names)
        self.boxes, self.parts, self.crop_bottom = boxes, parts, crop_bottom
        self.extras = extras or {}

    # -- building -------------------------------------------------------------------------------------

    @classmethod
    def from_records(cls, records: Iterable) -> "RecordTable":
        """The table of a list of :class:`~fgvc.data.record.Record` (what most readers build)."""
        records = list(records)
        n = len(records)
        split_names = list(dict.fromkeys(r.split for r in records))
        code = {s: i for i, s in enumerate(split_names)}
        boxes = parts = crop = None
        if any(r.box is not None for r in records):
            boxes = np.full((n, 4), np.nan, dtype=np.float32)
            for i, r in enumerate(records):
                if r.box is not None:
                    boxes[i] = r.box
        with_parts = [r.parts for r in records if r.parts is not None]
        if with_parts:
            parts = np.full((n, *np.shape(with_parts[0])), np.nan, dtype=np.float32)
            for i, r in enumerate(records):
                if r.parts is not None:
                    parts[i] = r.parts
        if any(r.crop_bottom for r in records):
            crop = np.array([r.crop_bottom for r in records], dtype=np.int32)
        keys = list(dict.fromkeys(k for r in records for k in r.extra))
        extras = {k: Column.from_values([r.extra.get(k) for r in records], np.array([k in r.extra for r in records]))
                  for k in keys}
        return cls(Strings.from_list([r.path for r in records]), np.array([r.label for r in records], dtype=np.int64),
                   np.array([code[r.split] for r in records], dtype=np.int16), split_names, boxes, parts, crop, extras)

    # -- the Sequence ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return self.paths[int(i)]

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def split(self, i: int) -> str:
        return self.split_names[int(self.split_codes[i])]

    def crop(self, i: int) -> int:
        return 0 if self.crop_bottom is None else int(self.crop_bottom[i])

    def record(self, i: int):
        """Record ``i`` as a :class:`~fgvc.data.record.Record` (made on demand)."""
        i = int(i)
        box = None
        if self.boxes is not None and not np.isnan(self.boxes[i, 0]):
            box = tuple(float(v) for v in self.boxes[i])
        parts = None
        if self.parts is not None and not np.isnan(self.parts[i]).all():
            parts = np.array(self.parts[i], dtype=np.float64)
        extra = {}
        for k, col in self.extras.items():
            present, v = col.get(i)
            if present:
                extra[k] = v
        return Record(path=self.path(i), label=self.label(i), split=self.split(i), box=box, parts=parts,
                      crop_bottom=self.crop(i), extra=extra)

    def __getitem__(self, key: Union[int, slice, np.ndarray]):
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        if isinstance(key, np.ndarray) or isinstance(key, list):
            return self.take(np.asarray(key))
        n = len(self)
        if not -n <= key < n:
            raise IndexError(key)
        return self.record(key % n)

    def __iter__(self) -> Iterator:
        return (self.record(i) for i in range(len(self)))

    def __add__(self, other: "RecordTable") -> "RecordTable":
        return concat([self, other])

    # -- subsets --------------------------------------------------------------------------------------

    def take(self, idx: np.ndarray) -> "RecordTable":
        """The records at ``idx`` (in that order), as a table."""
        idx = np.asarray(idx, dtype=np.int64)
        return RecordTable(self.paths.take(idx), self.labels[idx], self.split_codes[idx], self.split_names,
                           None if self.boxes is None else self.boxes[idx],
                           None if self.parts is None else self.parts[idx],
                           None if self.crop_bottom is None else self.crop_bottom[idx],
                           {k: c.take(idx) for k, c in self.extras.items()})

    def split_mask(self, splits: Iterable[str]) -> np.ndarray:
        wanted = [i for i, s in enumerate(self.split_names) if s in set(splits)]
        return np.isin(self.split_codes, wanted)

    def present_splits(self) -> list[str]:
        return [self.split_names[c] for c in sorted(set(np.unique(self.split_codes).tolist()))]

    # -- the cache ------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """The columns as ``.npy`` files in ``folder`` (and their small metadata as ``columns.json``)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"path_buffer": self.paths.buffer, "path_offsets": self.paths.offsets, "labels": self.labels,
                  "split_codes": self.split_codes}
        for name in ("boxes", "parts", "crop_bottom"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        extras = {}
        for i, (k, col) in enumerate(self.extras.items()):
            arrays[f"extra_{i}"] = col.data
            extras[k] = {"file": f"extra_{i}", "values": col.values}
        for name, a in arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(a))
        meta = {"prefix": self.paths.prefix, "split_names": self.split_names, "extras": extras,
                "arrays": sorted(arrays)}
        (folder / "columns.json").write_text(json.dumps(meta, default=str))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "RecordTable":
        """A table saved by :meth:`save`, its arrays mapped from the files (read-only, shared by every process
        that maps them) unless ``mmap=False``."""
        meta = json.loads((folder / "columns.json").read_text())
        mode = "r" if mmap else None
        arr = {n: np.load(folder / f"{n}.npy", mmap_mode=mode) for n in meta["arrays"]}
        extras = {k: Column(arr[v["file"]], v["values"]) for k, v in meta["extras"].items()}
        return cls(Strings(arr["path_buffer"], arr["path_offsets"], meta["prefix"]), arr["labels"],
                   arr["split_codes"], meta["split_names"], arr.get("boxes"), arr.get("parts"), arr.get("crop_bottom"),
                   extras)


def concat(tables: Sequence[RecordTable]) -> RecordTable:
    """Several tables one after the other (their records, in order)."""
    tables = [t for t in tables if len(t)] or list(tables[:1])
    if len(tables) == 1:
        return tables[0]
    return RecordTable.from_records([r for t in tables for r in t])


__all__ = ["RecordTable", "Strings", "Column", "concat"]
