"""Numeric precision of a run: the autocast dtype a setting means on a device, the autocast context, and the
loss scaler that fp16 (and only fp16) needs."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """``train.amp``: ``auto`` is bf16 on CUDA and full precision elsewhere; ``none``, ``bf16``, ``fp16``."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(dtype: Optional[torch.dtype], device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A gradient scaler for fp16 (whose range needs it); None for bf16 and full precision."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
