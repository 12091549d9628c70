"""Attention rollout as a vector chain, from recorded queries and keys (TransFG and RAMS-Trans).

Both methods need one row of a product of attention matrices, ``r = v^T A_L ... A_1`` (TransFG: the class
token's row of the per-head product of raw attention; RAMS-Trans: of the head-averaged ``0.5 A + 0.5 I``).
Multiplying the row vector through the layers costs O(N^2) per layer instead of the O(N^3) of the
matrix product, and each ``v^T A_l`` is computed from the layer's queries and keys in chunks of rows, so
no ``N x N`` matrix for all heads is ever held and the main forward keeps fused attention. Everything
here runs on detached tensors, without gradient; no ``no_grad`` region is used, so the forward that calls
it exports and loads with ``torch.export``. ``tests/test_method_transfg.py`` and
``tests/test_method_rams_trans.py`` compare it with the full matrix product of explicitly formed
attention, in float64.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch


def row_times_attention(v: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float,
                        chunk: int = 256) -> torch.Tensor:
    """``v^T softmax(q k^T * scale)`` per head, without forming the whole attention matrix.

    Args:
        v: ``[B, H, N]`` row vectors (one per head).
        q, k: ``[B, H, N, d]`` queries and keys of one layer.
        scale: The attention's scale (``d ** -0.5``).
        chunk: Query rows per chunk: the memory bound is ``B * H * chunk * N`` floats.

    Returns:
        ``[B, H, N]`` in float32 (float64 if the inputs are float64).

    The scores are computed in the queries' precision (bf16 under autocast, as the forward's attention),
    the softmax is computed and written in float32 in one pass, and the row product runs in float32. Autocast
    is switched off here: it would cast every ``[B, H, chunk, N]`` block to float32 for the softmax and back to
    bf16 for the product, two extra passes over the largest tensors of the step (most of the rollout's cost
    in the first GPU profile).
    """
    acc = torch.promote_types(q.dtype, torch.float32)
    v, q, k = v.detach(), q.detach(), k.detach()
    device = q.device.type
    autocasting = device in ("cuda", "cpu", "xpu", "mps") and torch.is_autocast_enabled(device)  # not on meta
    no_autocast = torch.autocast(device, enabled=False) if autocasting else contextlib.nullcontext()
    with no_autocast:
        out = torch.zeros(v.shape, dtype=acc, device=v.device)
        kt = k.transpose(-2, -1)
        q = q * scale  # on the small [B, H, N, d] queries, not on the [B, H, c, N] scores (exact for d = 4^n)
        for a in range(0, q.shape[2], chunk):
            b = min(a + chunk, q.shape[2])
            probs = torch.softmax(q[:, :, a:b] @ kt, dim=-1, dtype=acc)  # [B, H, c, N]
            out += (v[:, :, None, a:b].to(acc) @ probs)[:, :, 0]
    return out


def rollout_row(start: torch.Tensor, qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], scale: float,
                head_mean: bool = False, identity: float = 0.0, chunk: int = 256) -> torch.Tensor:
    """One row of the rollout ``v^T B_L ... B_1`` with ``B_l = (1 - identity) * A_l + identity * I``.

    Args:
        start: The row selector ``v``: ``[B, H, N]`` per head, or ``[B, N]`` with ``head_mean``.
        qs, ks: Queries and keys of layers ``1..L`` (forward order).
        scale: Attention scale.
        head_mean: Use the head-averaged attention (RAMS-Trans) instead of per-head products (TransFG).
        identity: Weight of the identity (residual) term; 0 for TransFG, 0.5 for RAMS-Trans.
        chunk: Query rows per chunk.

    Returns:
        ``[B, H, N]`` (per head) or ``[B, N]`` (head mean).
    """
    v = start
    for q, k in zip(reversed(qs), reversed(ks)):
        if head_mean:
            u = row_times_attention(v[:, None].expand(-1, q.shape[1], -1), q, k, scale, chunk).mean(1)
        else:
            u = row_times_attention(v, q, k, scale, chunk)
        v = u if identity == 0 else (1.0 - identity) * u + identity * v.to(u.dtype)
    return v
