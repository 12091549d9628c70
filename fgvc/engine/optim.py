"""The optimizer of a run and its learning-rate schedule.

Parameter groups come from the method (pretrained backbone at ``train.lr``, new layers at
``lr * head_lr_scale``, no weight decay on norms, biases and tokens); every group keeps its peak LR as
``base_lr`` and the schedule multiplies it by :func:`lr_factor` before each update.
"""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..methods.base import Method


def build_optimizer(model: Method, t: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the method's parameter groups."""
    groups = model.param_groups(t.lr, t.head_lr_scale, t.weight_decay)
    for g in groups:
        g["base_lr"] = g["lr"]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """The warm-up in steps: ``train.warmup_steps``, or ``train.warmup_fraction`` of the run's steps."""
    return cfg.warmup_steps or round(cfg.warmup_fraction * total_steps)


def lr_factor(update: int, cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> float:
    """LR multiplier of the ``update``-th optimizer step (1-based): linear warm-up, then the schedule."""
    warm = warmup_steps(cfg, total_steps)
    if warm and update <= warm:
        return update / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = (update - 1) // max(steps_per_epoch, 1)
        return cfg.step_gamma ** math.floor(epoch / cfg.step_epochs)
    if cfg.schedule == "exponential":  # CAL's code: gamma^((epoch + batch / batches) / step_epochs)
        return cfg.step_gamma ** ((update - 1) / max(steps_per_epoch, 1) / cfg.step_epochs)
    progress = (update - warm) / max(total_steps - warm, 1)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Sets every group's LR to ``base_lr * factor``."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
