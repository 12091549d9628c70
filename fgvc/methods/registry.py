"""The registry of methods: a name for each method class, and the validation of a method's options.

A method registers itself with :func:`register_method` (a class decorator) when its file is imported; importing
:mod:`fgvc.methods` imports every built-in method file. Registering a name twice or asking for an unknown one
raises. The method's options dataclass (``Method.Config``) validates the ``method:`` section of a config, so the
engine never needs to know any method by name. Like timm's model registry, this module imports none of the
methods; :mod:`fgvc.methods.factory` builds them.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Optional

from ..config import from_dict
from ..errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: enrolls a :class:`~fgvc.methods.base.Method` subclass under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__name__} has no 'name'")
    if name in _METHODS:
        raise ValueError(f"method '{name}' is already registered (by {_METHODS[name].__qualname__})")
    if not dataclasses.is_dataclass(getattr(cls, "Config", None)):
        raise ValueError(f"{cls.__name__}.Config must be a dataclass")
    _METHODS[name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The method class registered as ``name``.

    Raises:
        ConfigError: For an unknown name, with the closest registered names.
    """
    if name not in _METHODS:
        near = difflib.get_close_matches(name, list(_METHODS), n=2)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise ConfigError(f"unknown method '{name}'{hint}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_config(name: str, options: Optional[dict[str, Any]] = None) -> Any:
    """Validates a method's options against its ``Config`` dataclass (keys reported as ``method.*``)."""
    return from_dict(get_method(name).Config, options or {}, prefix="method.")


__all__ = ["register_method", "list_methods", "get_method", "method_config"]
