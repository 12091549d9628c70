"""The oldest timm that pyproject admits builds every method on its paper recipe's backbone and runs each
smoke recipe's step (tools/timm_compat.py, in a process that imports that timm first). `make test` installs
that timm apart (.venv/timm-<version>) and names the folder in FGVC_TIMM_FLOOR_DIR; `make timm-floor` runs
the same check by hand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def floor() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"timm>=([0-9.]+)"', text).group(1)


def test_the_lowest_admitted_timm_builds_every_method():
    folder = os.environ.get("FGVC_TIMM_FLOOR_DIR") or str(ROOT / ".venv" / f"timm-{floor()}")
    if not (Path(folder) / "timm").is_dir():
        pytest.fail(f"timm {floor()} is not installed in {folder}: run `make test` (or `make timm-floor`)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, str(ROOT)])}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "timm_compat.py")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert f"timm {floor()}: " in r.stdout, r.stdout + r.stderr  # it ran with the floor, not the pinned timm
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
