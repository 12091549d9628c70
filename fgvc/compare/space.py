"""The tuning space of a recipe: what ``fgvc compare --tune N`` may change, and how Optuna draws it.

A recipe declares it in its ``search:`` section, one dotted config key per dimension::

    search:
      train.lr: {low: 0.003, high: 0.03, log: true}          # a number on a log scale
      train.head_lr_scale: {low: 1, high: 20, log: true}
      method.temperature_step: {choices: [auto, 5, 10]}     # one of a list

Bounds that are both integers draw integers. A recipe without a ``search:`` section gets :func:`default_space`:
the learning rate on a log scale from a quarter to four times the recipe's, and the new layers' multiplier from 1
to 20. Every method's recipe is tuned with the same number of trials and the same budget per trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from ..config import RunConfig, load_config
from ..errors import ConfigError


@dataclass(frozen=True)
class Dimension:
    """One key of the space: a range (``low`` to ``high``, on a log scale or not, integers or not) or choices."""

    key: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False
    choices: Optional[tuple] = None

    def describe(self) -> str:
        """``train.lr: 0.003 to 0.03, log scale`` / ``method.temperature_step: one of auto, 5, 10``."""
        if self.choices is not None:
            return f"{self.key}: one of {', '.join(map(str, self.choices))}"
        return f"{self.key}: {self.low:g} to {self.high:g}{', log scale' if self.log else ''}" + \
            (", integers" if self.integer else "")


def default_space(cfg: RunConfig) -> dict[str, Any]:
    """The space of a recipe that declares none: its learning rate x1/4 to x4 (log) and new layers x1 to x20 (log)."""
    lr = cfg.train.lr
    return {"train.lr": {"low": lr / 4, "high": lr * 4, "log": True},
            "train.head_lr_scale": {"low": 1.0, "high": 20.0, "log": True}}


def parse_space(search: dict[str, Any], where: str = "search") -> list[Dimension]:
    """The dimensions of a ``search:`` mapping.

    Raises:
        ConfigError: A dimension no trial can draw from (an empty or reversed range, a log scale through zero,
            no choices), naming it.
    """
    dims = []
    if not search:
        raise ConfigError(f"{where}: the space is empty; declare at least one key")
    for key, spec in search.items():
        name = f"{where}.{key}"
        if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log", "choices"}):
            raise ConfigError(f"{name}: expected {{low, high[, log]}} or {{choices}}, got {spec!r}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{name}: choices must be a non-empty list, got {choices!r}")
            dims.append(Dimension(key, choices=tuple(choices)))
            continue
        low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(f"{name}: low and high must be numbers, got {low!r} and {high!r}")
        if not low < high:
            raise ConfigError(f"{name}: low {low:g} is not below high {high:g}")
        if log and low <= 0:
            raise ConfigError(f"{name}: a log scale needs positive bounds, got low {low:g}")
        dims.append(Dimension(key, float(low), float(high), log, isinstance(low, int) and isinstance(high, int)))
    return dims


def check_space(dims: list[Dimension], configs: list[str], settings: list[str]) -> None:
    """Every value a trial may draw makes a valid config (each bound and each choice tried with the recipe).

    Raises:
        ConfigError: The first value the config refuses, naming the dimension.
    """
    for dim in dims:
        values = list(dim.choices) if dim.choices is not None else [dim.low, dim.high]
        for value in values:
            if dim.integer:
                value = int(value)
            try:
                load_config(configs, settings + [assignment(dim.key, value)])
            except ConfigError as e:
                raise ConfigError(f"search.{dim.key}: the value {value!r} makes no valid run ({e})") from None


def assignment(key: str, value: Any) -> str:
    """``key=value`` with the value written as YAML reads it back (a string stays a string)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return f"{key}={text}"


def distributions(dims: list[Dimension]) -> dict[str, Any]:
    """The space as Optuna distributions (for ``study.ask``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for dim in dims:
        if dim.choices is not None:
            out[dim.key] = CategoricalDistribution(list(dim.choices))
        elif dim.integer:
            out[dim.key] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[dim.key] = FloatDistribution(dim.low, dim.high, log=dim.log)
    return out


def format_value(value: Any) -> str:
    """A drawn value for the page: 3 significant digits for a number."""
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:.3g}"
    return str(value)


__all__ = ["Dimension", "default_space", "parse_space", "check_space", "assignment", "distributions",
           "format_value"]
