"""The ways users bring their own data: a class-folder tree, or a CSV file.

Folder: ``root/<split>/<class>/<image>`` (``train``, ``val``, ``test``, ...), or ``root/<class>/<image>`` with
no split (then ``test_fraction`` carves a seeded, stratified test split). Class names are the folder
names, sorted. CSV: columns ``path``, ``label`` and an optional ``split``, found by their header names (in any order, beside
other columns) or, without a header, in that order; paths are relative to the CSV's folder; labels are class
names or integers.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from ...errors import DataError
from ..index import DatasetIndex, stratified_split
from ..record import Record
from ._text import check_files_exist
from .registry import register_reader

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
KNOWN_SPLITS = {"train", "val", "valid", "validation", "test", "trainval"}


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _carve_test(records: list[Record], fraction: float, seed: int) -> None:
    _, test = stratified_split(records, fraction, seed)
    for i in test:
        records[i].split = "test"


def _index(name: str, root: Path, records: list[Record], classes: list[str]) -> DatasetIndex:
    splits = {r.split for r in records}
    train = tuple(s for s in ("train", "trainval") if s in splits) or ("train",)
    test = ("test",) if "test" in splits else tuple(s for s in ("val", "valid", "validation") if s in splits)
    return DatasetIndex(name=name, root=str(root), records=records, class_names=classes, class_ids=classes,
                        train_splits=train, test_splits=test or ("test",))


@register_reader("folder", "imagefolder", description="class folders: root/<split>/<class>/* or root/<class>/*")
def read_folder(root: Path, test_fraction: float = 0.0, seed: int = 0) -> DatasetIndex:
    """A tree of class folders.

    Args:
        root: ``root/<split>/<class>/*`` or ``root/<class>/*``.
        test_fraction: Without split folders, the fraction of each class held out as the test split.
        seed: Seed of that split.
    """
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if not subdirs:
        raise DataError(f"{root}: no class folders found")
    split_layout = all(d.name.lower() in KNOWN_SPLITS for d in subdirs)
    groups = [(d.name.lower(), d) for d in subdirs] if split_layout else [("train", root)]
    classes = sorted({c.name for _, g in groups for c in g.iterdir() if c.is_dir()})
    label_of = {c: i for i, c in enumerate(classes)}
    records = []
    for split, g in groups:
        for cdir in sorted(c for c in g.iterdir() if c.is_dir()):
            records += [Record(path=str(p), label=label_of[cdir.name], split=split) for p in list_images(cdir)]
    if not split_layout and test_fraction > 0:
        _carve_test(records, test_fraction, seed)
    return _index("folder", root, records, classes)


# Header names the CSV reader recognizes for each column (compared lower-cased, spaces and dashes as underscores).
CSV_COLUMNS = {
    "path": ("path", "file", "filename", "file_name", "filepath", "file_path", "image", "image_path", "img", "image_id"),
    "label": ("label", "class", "class_name", "classname", "category", "species", "target", "name"),
    "split": ("split", "subset", "set", "fold", "partition"),
}


def csv_columns(header: list[str]) -> Optional[dict[str, int]]:
    """The position of each known column in a header row (None: the row is not a header, a data row).

    Raises:
        DataError: A header without a path or a label column.
    """
    names = [cell.strip().lower().replace(" ", "_").replace("-", "_") for cell in header]
    found = {column: next((i for i, n in enumerate(names) if n in known), None) for column, known in CSV_COLUMNS.items()}
    if all(i is None for i in found.values()):
        return None
    missing = [c for c in ("path", "label") if found[c] is None]
    if missing:
        raise DataError(f"the CSV's header ({', '.join(h.strip() for h in header)}) has no {' or '.join(missing)} "
                        f"column; name them {' / '.join(CSV_COLUMNS[missing[0]][:4])} ...")
    return {c: i for c, i in found.items() if i is not None}


@register_reader("csv", description="a CSV file: columns path, label[, split] by header name (or in that order "
                 "without a header); paths relative to the file")
def read_csv(root: Path, file: Optional[str] = None, test_fraction: float = 0.0, seed: int = 0) -> DatasetIndex:
    """A CSV list of images.

    With a header row, the columns are found by name (``path``/``file``/``image``..., ``label``/``class``/...,
    ``split``/``subset``...), in any order and beside other columns; without one, they are ``path,label[,split]``.

    Args:
        root: The CSV file, or a folder holding it.
        file: The CSV's name inside ``root`` when ``root`` is a folder (default: the only .csv there).
        test_fraction: Without a split column, the fraction of each class held out as the test split.
        seed: Seed of that split.
    """
    if root.is_dir():
        if file:
            path = root / file
        else:
            found = sorted(root.glob("*.csv"))
            if len(found) != 1:
                raise DataError(f"{root}: expected one .csv file, found {len(found)}; name it with data.options.file")
            path = found[0]
    else:
        path = root
    if not path.is_file():
        raise DataError(f"CSV file not found: {path}")
    rows, columns, described = [], None, "no header: path, label[, split] by position"
    with path.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if columns is None and not rows:
                try:
                    columns = csv_columns(row)
                except DataError as e:
                    raise DataError(f"{path}:{lineno}: {e}") from None
                if columns is not None:
                    described = "header: " + ", ".join(f"{c} = '{row[i].strip()}'" for c, i in columns.items())
                    continue
                columns = {"path": 0, "label": 1, "split": 2}
            if len(row) <= max(columns["path"], columns["label"]):
                raise DataError(f"{path}:{lineno}: expected {len(columns)} columns, got {row!r}")
            split_at = columns.get("split")
            split = row[split_at].strip() if split_at is not None and split_at < len(row) else ""
            rows.append((lineno, row[columns["path"]].strip(), row[columns["label"]].strip(), split or "train"))
    if not rows:
        raise DataError(f"{path}: no rows")
    names = sorted({r[2] for r in rows}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    label_of = {n: i for i, n in enumerate(names)}
    records, to_check, seen = [], [], {}
    for lineno, p, label, split in rows:
        full = (path.parent / p) if not Path(p).is_absolute() else Path(p)
        if p in seen:
            raise DataError(f"{path}:{lineno}: {p} is already listed at line {seen[p]}")
        seen[p] = lineno
        to_check.append((full, f"{path}:{lineno}"))
        records.append(Record(path=str(full), label=label_of[label], split=split))
    check_files_exist(to_check)
    if all(r[3] == "train" for r in rows) and test_fraction > 0:
        _carve_test(records, test_fraction, seed)
    index = _index("csv", path.parent, records, names)
    index.sources = [str(path)]
    index.notes.append(f"{path.name}: {described}")
    return index
