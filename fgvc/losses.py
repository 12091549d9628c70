"""Losses: the classification losses every method can swap (CE, label smoothing, GCE) and the
method-specific ones (TransFG's contrastive loss, WS-DAN's center loss).

The classification loss of a run is chosen by ``train.loss`` and handed to the method through the step
context (:func:`build_criterion`), so ``loss: gce`` works with every method.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradient_boosting_ce(logits: torch.Tensor, targets: torch.Tensor, k: int = 15) -> torch.Tensor:
    """Gradient-boosting cross-entropy (Sun et al., AAAI 2020, arXiv 1912.06842, Eq. 4).

    A (1 + k)-way cross-entropy over the true-class logit and the ``k`` largest negative logits:
    ``-log(e^{s_y} / (e^{s_y} + sum_{j in top-k negatives} e^{s_j}))``. Only the true class and the
    ``k`` hardest negatives receive gradient. ``k`` is clamped to ``K - 1``, where it equals plain CE.

    Args:
        logits: ``[B, K]``.
        targets: ``[B]`` class indices.
        k: Number of hardest negatives.
    """
    num_classes = logits.shape[1]
    k = max(1, min(k, num_classes - 1))
    true = logits.gather(1, targets[:, None])
    negatives = logits.scatter(1, targets[:, None], float("-inf"))  # out of place: keeps autograd simple
    hardest = negatives.topk(k, dim=1).values
    return F.cross_entropy(torch.cat([true, hardest], 1), torch.zeros_like(targets))


def build_criterion(loss: str, label_smoothing: float = 0.1, gce_k: int = 15) -> Criterion:
    """The classification loss a config names: ``ce``, ``smoothing`` or ``gce``.

    Label smoothing is PyTorch's: ``(1 - eps) * (-log p_y) + eps * mean_c(-log p_c)``, the form TransFG's
    code uses.
    """
    if loss == "ce":
        return lambda logits, targets: F.cross_entropy(logits.float(), targets)
    if loss == "smoothing":
        return lambda logits, targets: F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    if loss == "gce":
        return lambda logits, targets: gradient_boosting_ce(logits.float(), targets, gce_k)
    raise ValueError(f"unknown loss '{loss}'")


def contrastive_loss(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.4) -> torch.Tensor:
    """TransFG's contrastive loss (He et al., AAAI 2022, arXiv 2103.07976, Eq. 9, as the official code).

    On L2-normalized features with cosine similarities ``S``: same-class pairs (``i = j`` included, which
    adds 0) are pulled to 1, other pairs pushed below ``margin``, summed and divided by ``B^2``:
    ``(sum_{y_i=y_j} (1 - S_ij) + sum_{y_i!=y_j} max(S_ij - margin, 0)) / B^2``.
    """
    z = F.normalize(features.float(), dim=-1)
    sim = z @ z.t()
    same = (targets[:, None] == targets[None, :]).to(sim.dtype)
    total = (same * (1.0 - sim)).sum() + ((1.0 - same) * (sim - margin).clamp(min=0)).sum()
    return total / targets.shape[0] ** 2
