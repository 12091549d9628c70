"""Tensors to NumPy arrays from any device and any dtype: the one place fgvc calls ``Tensor.numpy``.

A CUDA tensor has no NumPy view and NumPy has no bfloat16, so every conversion detaches, widens
half-precision floats to float32 and copies to the host first. ``tests/test_arrays.py`` checks that no
other module calls ``.numpy()`` itself.
"""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` as a host NumPy array: detached, float16/bfloat16 widened to float32, copied off its device."""
    t = t.detach()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.cpu().numpy()
