"""What a checkpoint must hold besides the weights to continue a run exactly, and when it may be continued.

The random generators of every rank are saved and restored; a run resumes only with the same world size,
the same dataset and a config that differs only in keys that cannot change the result (paths, workers,
logging), unless the user allows the mismatch.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..config import fill_legacy

# Settings that may change between a run and its resume without changing the result.
RESUME_FREE = {"name", "out", "device", "data.root", "data.num_workers", "data.eval_batch_size",
               "data.check_images", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
               "train.tensorboard", "train.record_sample_ids", "train.eval_every", "eval", "reference", "search"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch and (where present) CUDA generators of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("method", "options", "backbone_args", "search"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ in a way that changes the result of a resumed run."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k in RESUME_FREE or k.split(".")[0] in RESUME_FREE:
            continue
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


def resume_problems(state: dict[str, Any], world_size: int, fingerprint: str, config: dict[str, Any]) -> list[str]:
    """Why a checkpoint should not be continued by this run (empty when it may)."""
    problems = []
    if state.get("world_size") != world_size:
        problems.append(f"it was saved by {state.get('world_size')} process(es), this run has {world_size} "
                        "(the data order would change)")
    if state["labels"].get("fingerprint") != fingerprint:
        problems.append("the dataset differs (other images, labels or splits)")
    diffs = config_differences(fill_legacy(state["config"]), config)
    if diffs:
        problems.append("the config differs: " + "; ".join(diffs[:6]))
    return problems
