"""CUB-200-2011 and NABirds: the two datasets that share the Caltech-UCSD text-file format.

Files (in the dataset root): ``images.txt`` (id path), ``image_class_labels.txt`` (id class),
``train_test_split.txt`` (id 1=train), ``classes.txt`` (class-id name), optional ``bounding_boxes.txt``
(id x y w h), ``parts/parts.txt`` (part-id name) and ``parts/part_locs.txt`` (id part x y visible).
NABirds adds ``hierarchy.txt`` (child parent); its class ids are not contiguous (the 555 leaves among
1,010 nodes), so labels are remapped in id order and the ancestors are kept per record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..index import DatasetIndex, contiguous_labels
from ..record import Record
from ._text import (
    check_files_exist,
    check_same_ids,
    find_root,
    parse,
    read_id_map,
    read_rows,
    require,
)
from .registry import register_reader


def _read_parts(root: Path, ids: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    parts_file, locs_file = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
    if not (parts_file.is_file() and locs_file.is_file()):
        return [], {}
    names = read_id_map(parts_file, str, "part name")
    order = {pid: i for i, pid in enumerate(names)}
    out: dict[str, np.ndarray] = {}
    for lineno, f in read_rows(locs_file, 5):
        img, pid = f[0], f[1]
        if img not in ids:
            raise DataError(f"{locs_file}:{lineno}: image id {img} is not in images.txt")
        if pid not in order:
            raise DataError(f"{locs_file}:{lineno}: part id {pid} is not in {parts_file}")
        arr = out.setdefault(img, np.zeros((len(order), 3), dtype=np.float32))
        arr[order[pid]] = [parse(v, float, locs_file, lineno, "coordinate") for v in f[2:5]]
    return [n for _, n in names.values()], out


def _read_boxes(root: Path, ids: dict) -> dict[str, tuple]:
    path = root / "bounding_boxes.txt"
    if not path.is_file():
        return {}
    out = {}
    for lineno, f in read_rows(path, 5):
        if f[0] not in ids:
            raise DataError(f"{path}:{lineno}: image id {f[0]} is not in images.txt")
        out[f[0]] = tuple(parse(v, float, path, lineno, "box value") for v in f[1:5])
    return out


def read_cub_format(root: Path, name: str, hierarchy: bool) -> DatasetIndex:
    """Reads the shared CUB/NABirds layout (see the module docstring)."""
    images_path = root / "images.txt"
    labels_path = require(root / "image_class_labels.txt")
    split_path = require(root / "train_test_split.txt")
    classes_path = require(root / "classes.txt")
    images = read_id_map(images_path, str, "path")
    labels = read_id_map(labels_path, str, "class id")
    splits = read_id_map(split_path, int, "train flag")
    classes = read_id_map(classes_path, str, "class name")
    check_same_ids(images, images_path, labels, labels_path)
    check_same_ids(images, images_path, splits, split_path)

    for img, (lineno, cid) in labels.items():
        if cid not in classes:
            raise DataError(f"{labels_path}:{lineno}: class {cid} of image {img} is out of range "
                            f"(not in {classes_path})")
    for img, (lineno, flag) in splits.items():
        if flag not in (0, 1):
            raise DataError(f"{split_path}:{lineno}: train flag must be 0 or 1, got {flag}")

    if hierarchy:  # NABirds: only the classes that images use are leaves
        used = {cid for _, cid in labels.values()}
        class_order = sorted(used, key=lambda c: int(c) if c.isdigit() else c)
    else:
        class_order = list(classes)
    label_of = contiguous_labels(class_order, str(classes_path))

    parents: dict[str, str] = {}
    if hierarchy:
        hier = root / "hierarchy.txt"
        if hier.is_file():
            parents = {k: v for k, (_, v) in read_id_map(hier, str, "parent id").items()}

    def ancestors(cid: str) -> list[str]:
        chain, seen = [], set()
        while cid in parents and cid not in seen:
            seen.add(cid)
            cid = parents[cid]
            chain.append(classes[cid][1] if cid in classes else cid)
        return chain

    boxes = _read_boxes(root, images)
    part_names, parts = _read_parts(root, images)
    img_dir = root / "images"
    records, to_check = [], []
    for img, (lineno, rel) in images.items():
        path = img_dir / rel
        to_check.append((path, f"{images_path}:{lineno}"))
        cid = labels[img][1]
        extra = {"image_id": img}
        if hierarchy:
            extra["ancestors"] = ancestors(cid)
        records.append(Record(path=str(path), label=label_of[cid], split="train" if splits[img][1] else "test",
                              box=boxes.get(img), parts=parts.get(img), extra=extra))
    check_files_exist(to_check)

    def display(cid: str) -> str:
        n = classes[cid][1]
        return n.split(".", 1)[1] if "." in n and n.split(".", 1)[0].isdigit() else n

    files = [images_path, labels_path, split_path, classes_path, root / "bounding_boxes.txt", root / "hierarchy.txt",
             root / "parts" / "parts.txt", root / "parts" / "part_locs.txt", root / "synthetic.json"]
    return DatasetIndex(name=name, root=str(root), records=records,
                        class_names=[display(c) for c in class_order], class_ids=class_order,
                        part_names=part_names, sources=[str(f) for f in files if f.is_file()])


@register_reader("cub", "cub200", description="CUB-200-2011 (images.txt, image_class_labels.txt, ...)")
def read_cub(root: Path) -> DatasetIndex:
    """CUB-200-2011: 200 classes, 5,994 train / 5,794 test, with boxes and 15 parts."""
    base = find_root(root, "images.txt", ["CUB_200_2011"])
    index = read_cub_format(base, "cub", hierarchy=False)
    synthetic = base / "synthetic.json"
    if synthetic.is_file():  # fgvc's own synthetic data in this layout: expect what it was written with
        p = json.loads(synthetic.read_text())
        index.expected = {"train": p["classes"] * p["train_per_class"], "test": p["classes"] * p["test_per_class"]}
        index.expected_classes = p["classes"]
        index.notes.append("fgvc's synthetic data: the expected counts come from its synthetic.json")
        return index
    index.expected = {"train": 5994, "test": 5794}
    index.expected_classes = 200
    return index


@register_reader("nabirds", description="NABirds (CUB-like files + hierarchy.txt, remapped class ids)")
def read_nabirds(root: Path) -> DatasetIndex:
    """NABirds: 555 leaf classes, 23,929 train / 24,633 test; class ids remapped to 0..554."""
    base = find_root(root, "images.txt", ["nabirds"])
    index = read_cub_format(base, "nabirds", hierarchy=True)
    index.expected = {"train": 23929, "test": 24633}
    index.expected_classes = 555
    return index
