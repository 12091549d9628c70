"""Parsing helpers shared by the readers: every fault names the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from ...errors import DataError


def find_root(root: str | Path, marker: str, candidates: Iterable[str] = ()) -> Path:
    """Finds the folder holding ``marker`` at ``root`` or one of ``root/<candidate>``.

    Official archives unpack into a named folder (``CUB_200_2011/``, ``fgvc-aircraft-2013b/``); users
    point fgvc at either level.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset root not found: {root}")
    for c in ("", *candidates):
        base = root / c if c else root
        if (base / marker).exists():
            return base
    tried = ", ".join(str((root / c / marker) if c else root / marker) for c in ("", *candidates))
    raise DataError(f"{root} does not look like this dataset: none of {tried} exists")


def require(path: Path, what: str = "annotation file") -> Path:
    if not path.is_file():
        raise DataError(f"missing {what}: {path}")
    return path


def read_rows(path: Path, min_fields: int, max_split: Optional[int] = None,
              comment: Optional[str] = None) -> list[tuple[int, list[str]]]:
    """Whitespace-separated rows with their 1-based line numbers; blank lines are skipped.

    Args:
        path: The text file.
        min_fields: Fewer fields on a line is an error naming the line.
        max_split: Split at most this many times (the last field keeps its spaces: Aircraft names).
        comment: Lines starting with this are skipped.
    """
    require(path)
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or (comment and line.startswith(comment)):
            continue
        fields = line.split(None, max_split) if max_split is not None else line.split()
        if len(fields) < min_fields:
            raise DataError(f"{path}:{lineno}: expected {min_fields} fields, got {len(fields)}: {line!r}")
        rows.append((lineno, fields))
    return rows


def parse(value: str, convert: Callable, path: Path, lineno: int, what: str):
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}:{lineno}: {what} {value!r} is not a valid {convert.__name__}") from None


def read_id_map(path: Path, convert: Callable = str, what: str = "value") -> dict[str, tuple[int, object]]:
    """A two-column ``id value`` file as ``{id: (lineno, value)}``; duplicate ids are an error."""
    out: dict[str, tuple[int, object]] = {}
    for lineno, fields in read_rows(path, 2, max_split=1):
        key = fields[0]
        if key in out:
            raise DataError(f"{path}:{lineno}: id {key} is listed twice (first at line {out[key][0]})")
        out[key] = (lineno, parse(fields[1], convert, path, lineno, what))
    return out


def check_same_ids(reference: dict, reference_path: Path, other: dict, other_path: Path) -> None:
    """Every id of ``reference`` must be in ``other`` and the other way round."""
    for key, (lineno, _) in reference.items():
        if key not in other:
            raise DataError(f"{reference_path}:{lineno}: image id {key} is missing from {other_path}")
    for key, (lineno, _) in other.items():
        if key not in reference:
            raise DataError(f"{other_path}:{lineno}: image id {key} is not in {reference_path}")


def check_files_exist(paths: Iterable[tuple[Path, str]]) -> None:
    """Raises for the first image listed in an annotation file but absent on disk.

    Args:
        paths: ``(image path, "annotation-file:line")`` pairs.
    """
    missing = [(p, where) for p, where in paths if not p.is_file()]
    if missing:
        p, where = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{where}: image {p} is listed but not on disk{more}")


def load_mat(path: Path) -> dict:
    """A MATLAB .mat file (v5) through scipy, with MATLAB's 1x1 wrappers squeezed away."""
    from scipy.io import loadmat

    require(path)
    try:
        return loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as e:  # scipy raises several types for a damaged or wrong file
        raise DataError(f"{path}: cannot read MATLAB file ({e.__class__.__name__}: {e})") from None


def mat_field(struct, name: str, path: Path) -> list:
    """Column ``name`` of a MATLAB struct array as a Python list (one entry per element)."""
    import numpy as np

    arr = np.atleast_1d(struct)
    if arr.dtype.names is None or name not in arr.dtype.names:
        raise DataError(f"{path}: the annotation struct has no field '{name}' "
                        f"(fields: {', '.join(arr.dtype.names or [])})")
    return [v.item() if hasattr(v, "item") and getattr(v, "size", 1) == 1 else v for v in arr[name]]
