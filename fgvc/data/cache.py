"""The index of a run's dataset, written once beside the run as columns and mapped again by whoever needs it.

At iNaturalist scale reading the annotation files takes seconds to a minute; every DDP rank doing it again, and
every ``fgvc eval`` after, is wasted. The trainer's rank 0 builds the index and writes it into
``RUN/index/`` (the record columns as ``.npy`` files, :meth:`~fgvc.data.table.RecordTable.save`, and
``meta.json`` with the class names, the splits, the fingerprint, and the size and modification time of every
annotation file the reader read); the other ranks map it (``np.load(mmap_mode="r")``: the pages are shared by
every process on the node). Later commands on the run reuse it while its key (reader, root, options, class
subset) and its annotation files are unchanged; a dataset whose reader names no annotation files (class
folders) is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from ..config import DataConfig
from .index import DatasetIndex
from .table import RecordTable

VERSION = 1


def cache_key(cfg: DataConfig) -> str:
    """What an index depends on besides its files: reader, root, options, class subset, synthetic settings."""
    root = str(Path(cfg.root).expanduser().resolve()) if cfg.root else None
    parts = {"v": VERSION, "dataset": cfg.dataset, "root": root, "options": cfg.options, "max_classes": cfg.max_classes,
             "synthetic": vars(cfg.synthetic) if cfg.dataset == "synthetic" and not cfg.root else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stats(paths: list[str]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([p, st.st_size, st.st_mtime_ns])
    return out


def save_index(index: DatasetIndex, folder: Path, key: str) -> None:
    """Writes ``index`` into ``folder`` (replacing what was there, never leaving half a cache)."""
    folder = Path(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    index.records.save(tmp)
    meta = {"key": key, "name": index.name, "root": index.root, "class_names": index.class_names,
            "class_ids": index.class_ids, "train_splits": list(index.train_splits),
            "test_splits": list(index.test_splits), "expected": index.expected,
            "expected_classes": index.expected_classes, "part_names": index.part_names, "notes": index.notes,
            "sources": _stats(index.sources), "fingerprint": index.fingerprint()}
    (tmp / "meta.json").write_text(json.dumps(meta))
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_index(folder: Path, key: Optional[str] = None, check_sources: bool = True) -> Optional[DatasetIndex]:
    """The index cached in ``folder``, its columns mapped from the files; None when there is none, when its key
    is not ``key``, or (``check_sources``) when it names no annotation files or one of them changed."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if key is not None and meta.get("key") != key:
        return None
    if check_sources:
        sources = meta.get("sources") or []
        try:
            if not sources or _stats([s[0] for s in sources]) != sources:
                return None
        except OSError:
            return None
    index = DatasetIndex(name=meta["name"], root=meta["root"], records=RecordTable.load(folder),
                         class_names=meta["class_names"], class_ids=meta["class_ids"],
                         train_splits=tuple(meta["train_splits"]), test_splits=tuple(meta["test_splits"]),
                         expected=meta["expected"], expected_classes=meta["expected_classes"],
                         part_names=meta["part_names"], notes=meta["notes"], sources=[s[0] for s in meta["sources"]])
    index._fingerprint = meta["fingerprint"]
    return index


__all__ = ["cache_key", "save_index", "load_index"]
