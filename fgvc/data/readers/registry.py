"""The registry of dataset readers and its single entry point, ``open_dataset(name, root, **options)``.

A reader is a function ``read(root: Path, **options) -> DatasetIndex`` registered under one or more names
with :func:`register_reader`; its keyword options (typed) come from ``data.options`` in the config and are
checked before it runs. The built-in readers register when ``fgvc.data.readers`` is imported.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from pathlib import Path
from typing import Any, Callable

from ...config import convert_value
from ...errors import ConfigError, DataError
from ..index import DatasetIndex

_READERS: dict[str, Callable[..., DatasetIndex]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_reader(*names: str, description: str = ""):
    """Registers a reader function under ``names``; a name used twice is an error."""

    def wrap(fn):
        for n in names:
            if n in _READERS:
                raise ValueError(f"dataset reader '{n}' is registered twice")
            _READERS[n] = fn
            _DESCRIPTIONS[n] = description
        return fn

    return wrap


def list_datasets() -> dict[str, str]:
    """Reader names and a one-line description of the format each reads."""
    return dict(sorted(_DESCRIPTIONS.items()))


def _check_options(name: str, fn: Callable, options: dict[str, Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    accepted = [p for p in sig.parameters if p != "root"]
    out = {}
    for key, value in options.items():
        if key not in accepted:
            raise ConfigError(f"unknown config key 'data.options.{key}' for dataset '{name}' "
                              f"(it takes: {', '.join(accepted) or 'no options'})")
        out[key] = convert_value(value, hints.get(key, Any), f"data.options.{key}")
    return out


def open_dataset(name: str, root: str | Path | None, **options: Any) -> DatasetIndex:
    """Reads a dataset's annotation files and returns its records.

    Args:
        name: A registered reader name (``fgvc data list`` / :func:`list_datasets`).
        root: The folder the official archive unpacked into (or its parent).
        **options: Reader-specific options (``level="family"`` for FGVC-Aircraft, ...).

    Raises:
        ConfigError: For an unknown reader or option.
        DataError: For a missing root, a missing or malformed file, or an inconsistent annotation.
    """
    if name not in _READERS:
        # `synthetic` is no reader (fgvc.data.build_index generates it) but a name data.dataset takes all the same
        known = sorted([*_READERS, "synthetic"])
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"unknown dataset '{name}'{hint}; available: {', '.join(known)}")
    fn = _READERS[name]
    opts = _check_options(name, fn, options)
    if root is None or str(root) == "":
        raise DataError(f"dataset '{name}' needs a root folder: pass data.root=DIR (or --data-root DIR)")
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset root not found: {root}")
    index = fn(root, **opts)
    if not index.records:
        raise DataError(f"{root}: no images found for dataset '{name}'")
    labels = index.records.labels
    bad = (labels < 0) | (labels >= index.num_classes)
    if bad.any():  # a reader bug, not a user fault, but never train on it
        i = int(bad.argmax())
        raise DataError(f"{index.records.path(i)}: label {int(labels[i])} out of range 0..{index.num_classes - 1}")
    return index
