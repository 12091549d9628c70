"""Shared fixtures: a private cache folder, a small synthetic dataset on disk, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated datasets go to a per-session folder, never to the user's ~/.cache."""
    os.environ["FGVC_CACHE"] = str(tmp_path_factory.mktemp("fgvc-cache"))
    yield


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the CUB-200-2011 layout (4 classes, 8 + 4 images each, 48 px)."""
    from fgvc.data.synthetic import write_cub_layout

    return write_cub_layout(tmp_path_factory.mktemp("synth"), classes=4, train_per_class=8, test_per_class=4,
                            size=48, seed=1)


def tiny_overrides(root: Path, out: Path, **extra) -> list[str]:
    """Overrides that make any recipe run in seconds on the CPU on ``synth_root``."""
    items = {"data.dataset": "synthetic", "data.root": str(root), "data.img_size": 32, "data.resize": 36,
             "data.batch_size": 8, "data.eval_batch_size": 16, "data.num_workers": 0, "device": "cpu",
             "out": str(out), "train.log_every": 2, "eval.explain_samples": 2}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``smoke_run(method)``: the folder of a finished `fgvc train smoke/<method>` run (trained once per session,
    on the smoke recipe's own synthetic data)."""
    from fgvc.cli import main

    done: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in done:
            out = tmp_path_factory.mktemp(f"smoke-{method}") / "run"
            assert main(["train", f"smoke/{method}", f"out={out}", "--quiet"]) == 0
            done[method] = out
        return done[method]

    return get
