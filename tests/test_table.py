"""Records as columns: the same records as before for everything that reads them, the same fingerprint and splits,
a cache written once and mapped again, the iNaturalist files streamed, and loader workers whose private memory
does not grow with the number of records."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fgvc.config import DataConfig
from fgvc.data import build_index, make_splits
from fgvc.data.index import DatasetIndex, stratified_split
from fgvc.data.record import Record
from fgvc.data.table import RecordTable
from fgvc.errors import DataError


def some_records(root: str = "/data/set") -> list[Record]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(40):
        extra = {"image_id": str(i), "ancestors": ["a", f"b{i % 3}"]} if i % 2 else {"image_id": str(i)}
        if i % 5 == 0:
            extra["note"] = {"k": i}
        out.append(Record(path=f"{root}/images/c{i % 4}/img_{i}.jpg", label=i % 4, split=("train", "test", "val")[i % 3],
                          box=(1.0 * i, 2.0, 30.5, 40.0) if i % 4 else None,
                          parts=rng.random((3, 3)) if i % 3 == 0 else None, crop_bottom=20 if i == 7 else 0,
                          extra=extra))
    out.append(Record(path="/elsewhere/outside.jpg", label=1, split="train"))
    return out


def same(a: Record, b: Record) -> bool:
    parts = (a.parts is None and b.parts is None) or (a.parts is not None and b.parts is not None
                                                       and np.allclose(a.parts, b.parts, atol=1e-6))
    return (a.path, a.label, a.split, a.box, a.crop_bottom, a.extra) == (b.path, b.label, b.split, b.box,
                                                                          b.crop_bottom, b.extra) and parts


def old_fingerprint(records, root) -> str:  # the algorithm of the list-of-records index, kept for reference
    h = hashlib.sha256()
    for r in records:
        try:
            rel = str(Path(r.path).relative_to(Path(root)))
        except ValueError:
            rel = r.path
        h.update(f"{rel}\t{r.label}\t{r.split}\n".encode())
    return h.hexdigest()[:16]


def test_the_table_gives_back_every_record_and_survives_save_and_load(tmp_path):
    records = some_records()
    table = RecordTable.from_records(records)
    assert len(table) == len(records) and all(same(a, b) for a, b in zip(table, records))
    assert same(table[-1], records[-1]) and table.path(3) == records[3].path and table.label(5) == records[5].label
    part = table[5:12]
    assert isinstance(part, RecordTable) and [r.path for r in part] == [r.path for r in records[5:12]]
    picked = table.take(np.array([9, 2, 2]))
    assert [r.path for r in picked] == [records[i].path for i in (9, 2, 2)]
    table.save(tmp_path / "t")
    mapped = RecordTable.load(tmp_path / "t")
    assert isinstance(mapped.labels, np.memmap) and all(same(a, b) for a, b in zip(mapped, records))
    with pytest.raises(IndexError):
        table[len(records)]


def test_the_fingerprint_and_the_splits_are_those_of_the_list_of_records():
    records = some_records()
    index = DatasetIndex(name="x", root="/data/set", records=records, class_names=list("abcd"), class_ids=list("abcd"))
    assert index.fingerprint() == old_fingerprint(records, "/data/set")
    rng = np.random.default_rng(1)
    many = [Record(path=f"/d/{i}.jpg", label=int(rng.integers(0, 7)), split="train") for i in range(500)]

    def old_split(recs, fraction, seed):
        rng = np.random.default_rng(seed)
        by_class = {}
        for i, r in enumerate(recs):
            by_class.setdefault(r.label, []).append(i)
        train, val = [], []
        for label in sorted(by_class):
            idx = np.array(by_class[label])
            rng.shuffle(idx)
            n_val = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
            val += idx[:n_val].tolist()
            train += idx[n_val:].tolist()
        return sorted(train), sorted(val)

    assert stratified_split(RecordTable.from_records(many), 0.2, 3) == old_split(many, 0.2, 3)
    assert stratified_split(many, 0.2, 3) == old_split(many, 0.2, 3)
    sel = index.select(["train"])
    assert [r.path for r in sel] == [r.path for r in records if r.split == "train"]
    with pytest.raises(DataError, match="no images in split"):
        index.select(["nope"])


def test_the_index_cache_is_written_once_and_mapped_while_its_files_are_unchanged(tmp_path, synth_root, monkeypatch):
    cfg = DataConfig(dataset="synthetic", root=str(synth_root))
    first = build_index(cfg, cache=tmp_path / "index")
    assert (tmp_path / "index" / "meta.json").is_file()
    import fgvc.data as data

    calls = []
    real = data.open_dataset
    monkeypatch.setattr(data, "open_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = build_index(cfg, cache=tmp_path / "index")
    assert not calls and isinstance(again.records.labels, np.memmap)
    assert again.fingerprint() == first.fingerprint() and again.class_names == first.class_names
    assert [r.path for r in again.records] == [r.path for r in first.records]
    s1, s2 = make_splits(first, cfg, 0), make_splits(again, cfg, 0)
    assert [r.path for r in s1.test] == [r.path for r in s2.test]
    labels = Path(synth_root) / "image_class_labels.txt"
    labels.write_text(labels.read_text())  # touched: a new modification time
    import os

    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    build_index(cfg, cache=tmp_path / "index")
    assert calls  # read again
    other = DataConfig(dataset="synthetic", root=str(synth_root), max_classes=2)
    assert build_index(other, cache=tmp_path / "index").num_classes == 2  # another key: read again


def test_inat_json_is_streamed_whatever_its_layout(tmp_path):
    from fgvc.data.readers import open_dataset

    images = [{"id": i, "file_name": f"train/c{i % 3}/{i}.jpg", "width": 10} for i in range(7)]
    anns = [{"id": i, "image_id": i, "category_id": [5, 9, 11][i % 3]} for i in range(7)]
    cats = [{"id": c, "name": f"species {c}", "supercategory": "Plantae", "kingdom": "Plantae"} for c in (5, 9, 11)]
    val = {"images": [{"id": 100, "file_name": "val/a.jpg"}], "annotations": [{"id": 0, "image_id": 100,
                                                                               "category_id": 9}], "categories": cats}
    (tmp_path / "val.json").write_text(json.dumps(val))
    for text in (json.dumps({"info": {"year": 2021}, "images": images, "categories": cats, "annotations": anns}),
                 json.dumps({"annotations": anns, "licenses": [{"id": 1}], "categories": cats, "images": images},
                            indent=2)):
        (tmp_path / "train.json").write_text(text)
        index = open_dataset("inat", tmp_path, check_files=False)
        assert len(index.records) == 8 and index.class_names == ["species 5", "species 9", "species 11"]
        r = index.records[4]
        assert r.path == str(tmp_path / "train/c1/4.jpg") and r.label == 1 and r.split == "train"
        assert r.extra == {"image_id": 4, "supercategory": "Plantae", "kingdom": "Plantae"}
        assert index.records[7].split == "val" and index.records[7].label == 1
    (tmp_path / "train.json").write_text(json.dumps({"images": images, "annotations": anns})[:-30])
    with pytest.raises(DataError, match=r"train.json: malformed JSON|train.json: expected"):
        open_dataset("inat", tmp_path, check_files=False)


@pytest.mark.slow
def test_loader_workers_do_not_copy_the_records(tmp_path):
    """The probe of the issue, small: each worker's private memory after an epoch of index lookups does not grow
    with the records as columns, and does as Python objects (the layout before)."""
    from fgvc.bench.index import _run, generate_inat

    small, big = generate_inat(tmp_path / "s", 1000, 100), generate_inat(tmp_path / "b", 60_000, 500)
    cols_small = _run("workers", str(small), "2", "columns")["mean_private_mib"]
    cols_big = _run("workers", str(big), "2", "columns")["mean_private_mib"]
    objs_big = _run("workers", str(big), "2", "objects")["mean_private_mib"]
    assert cols_big - cols_small < 3, (cols_small, cols_big)
    assert objs_big - cols_big > 6, (cols_big, objs_big)  # ~0.2 KiB a record per worker with objects


def test_strings_take_gathers_in_blocks_as_at_once(monkeypatch):
    """take() gathers a block of strings at a time (bounded memory at iNaturalist size): any order, repeats and
    empty strings give the strings asked for; every string in order keeps the buffer."""
    import fgvc.data.table as table_module
    from fgvc.data.table import Strings

    words = ["a", "bcd", "", "efgh", "ij", "k", "lmnop", "q"]
    buffer = np.frombuffer("".join(words).encode(), dtype=np.uint8)
    strings = Strings(buffer, np.cumsum([0] + [len(w) for w in words]), "")
    idx = np.array([6, 0, 2, 3, 3, 1, 5, 7, 2])
    for block in (1, 3, 1 << 16):
        monkeypatch.setattr(table_module, "_TAKE_BLOCK", block)
        got = strings.take(idx)
        assert [bytes(got.buffer[got.offsets[i]:got.offsets[i + 1]]).decode() for i in range(len(idx))] == \
            [words[i] for i in idx]
    assert strings.take(np.arange(len(words))).buffer is buffer
