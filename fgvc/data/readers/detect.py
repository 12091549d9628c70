"""Which reader a dataset folder needs, told from the files each official layout ships with.

A user points ``fgvc compare`` at the folder an archive unpacked into (or the folder above it) and should not
need to know fgvc's reader names. Each official layout is recognized by files only it has, in the folder named
or up to two levels below it (``data/cub/CUB_200_2011/``, ``fgvc-aircraft-2013b/data/``); a tree of class folders
and a lone CSV file are the user's own layouts, read where the user points, and come last.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import DataError
from .folder import IMAGE_SUFFIXES, KNOWN_SPLITS

# (reader, files that must all be there); the first match wins, so a layout whose files are a superset of
# another's (NABirds has CUB's files and a hierarchy) comes first.
OFFICIAL_LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nabirds", ("images.txt", "train_test_split.txt", "hierarchy.txt")),
    ("cub", ("images.txt", "train_test_split.txt", "image_class_labels.txt")),
    ("aircraft", ("data/images_variant_test.txt",)),
    ("aircraft", ("images_variant_test.txt",)),
    ("cars", ("cars_annos.mat",)),
    ("cars", ("devkit/cars_train_annos.mat",)),
    ("dogs", ("train_list.mat", "test_list.mat")),
    ("flowers", ("imagelabels.mat", "setid.mat")),
    ("pets", ("annotations/trainval.txt", "annotations/test.txt")),
    ("inat", ("train2017.json", "val2017.json")),
    ("inat", ("train2018.json", "val2018.json")),
    ("inat", ("train.json", "val.json")),
)


def _subfolders(folder: Path) -> list[Path]:
    """Subfolders, hidden ones left out; ``scandir`` tells folders from files without a stat call per image."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def _official(folder: Path) -> tuple[str, str] | None:
    for reader, files in OFFICIAL_LAYOUTS:
        if all((folder / name).exists() for name in files):
            return reader, ", ".join(files)
    return None


def _has_images(folder: Path, depth: int) -> bool:
    """Whether an image lies in ``folder`` or up to ``depth`` levels below; stops at the first one found."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                return True
            if depth and entry.is_dir() and _has_images(Path(entry.path), depth - 1):
                return True
    return False


def _split_folders(folder: Path) -> tuple[str, str] | None:
    splits = [d.name for d in _subfolders(folder) if d.name.lower() in KNOWN_SPLITS]
    if splits and _has_images(folder, depth=2):
        return "folder", f"split folders {', '.join(splits)}"
    return None


def _csv_or_class_folders(folder: Path) -> tuple[str, str] | None:
    tables = sorted(p.name for p in folder.glob("*.csv"))
    if len(tables) == 1:
        return "csv", tables[0]
    if any(_has_images(d, depth=0) for d in _subfolders(folder)):
        return "folder", "class folders"
    return None


def detect_dataset(root: str | Path) -> tuple[str, Path, str]:
    """The reader for a dataset folder.

    Args:
        root: The folder the user named.

    Returns:
        (reader name, the folder to read, what gave it away: the files found).

    Raises:
        DataError: ``root`` is missing, or no layout fgvc reads is found there or below.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    found = _official(root) or _split_folders(root)  # an official layout never has train/ and test/ class folders
    if found:
        return found[0], root, found[1]
    level = [root]
    for _ in range(2):  # its subfolders, then theirs (data/cub/CUB_200_2011/)
        level = [sub for folder in level for sub in _subfolders(folder)]
        for folder in level:
            found = _official(folder)
            if found:
                return found[0], folder, found[1]
    found = _csv_or_class_folders(root)
    if found:
        return found[0], root, found[1]
    raise DataError(f"{root}: no dataset layout fgvc reads was found (the official CUB, NABirds, Aircraft, Cars, "
                    f"Dogs, Flowers-102, Pets and iNaturalist files, train/ and test/ class folders, or one CSV "
                    f"file); name the reader with --dataset (fgvc data list)")


__all__ = ["detect_dataset", "OFFICIAL_LAYOUTS"]
