"""The processes of a comparison: what one run is (:class:`Unit`), how many run at once, how its settings and its
outcome read."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from .plan import Row
from .space import assignment, format_value


def auto_parallel(device: str, runs: int) -> int:
    """Runs at once: one on a CPU (its cores are shared by every run); on a GPU, one per 20 GiB, at most 8."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 1
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return max(1, min(8, runs, int(gib // 20)))


@dataclass
class Unit:
    """One training process to run: a trial of a row, or a row's run (with the chosen setting, when tuned)."""

    row: Row
    run_dir: Path
    arguments: list[str]
    label: str
    trial: Any = None  # the Optuna trial, for a tuning trial
    started: float = field(default_factory=time.time)
    process: Optional[subprocess.Popen] = None
    log: Optional[IO[str]] = None
    seen_epochs: int = 0
    pruned: bool = False


def settings_of(params: dict[str, Any]) -> list[str]:
    return [assignment(k, v) for k, v in sorted(params.items())]


def describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]} {format_value(v)}" for k, v in sorted(params.items()))


def test_line(unit: Unit) -> Optional[dict[str, Any]]:
    """The test report a run printed as JSON (its last JSON line), if any."""
    lines = [x for x in Path(unit.log.name).read_text().splitlines() if x.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None


def error_line(unit: Unit) -> str:
    """The cause a failed run gave (its last 'error:' line, else its last line)."""
    lines = [x.strip() for x in Path(unit.log.name).read_text().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    chosen = errors[-1] if errors else (lines[-1] if lines else f"exit {unit.process.returncode}")
    return chosen.removeprefix("error: ")


__all__ = ["auto_parallel", "Unit", "settings_of", "describe_params", "test_line", "error_line"]
