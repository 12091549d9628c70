"""One optimizer step's pieces, shared by the trainer and ``fgvc bench`` so both time the same work.

The method's ``training_step`` is wrapped in a module (:class:`StepModule`) so that DDP's gradient hooks
fire and ``torch.compile`` sees forward and loss as one graph. :func:`forward_backward` runs one
micro-batch under autocast and accumulates its gradient; :func:`clip_gradients` and :func:`apply_update`
finish the step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..methods.base import Method, StepContext, StepOutput
from .precision import autocast


class StepModule(nn.Module):
    """``forward(images, targets, ctx)`` is the method's training step."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        return self.method.training_step(images, targets, ctx)


def wrap_step(method: Method, *, distributed: bool = False, device: Optional[torch.device] = None,
              find_unused_parameters: bool = False, compile: bool = False,
              compile_options: Optional[dict] = None) -> nn.Module:
    """The step module, under DDP when ``distributed``, compiled when ``compile`` (``compile_options`` are
    ``torch.compile``'s keywords, e.g. ``{"mode": "max-autotune-no-cudagraphs"}``)."""
    step: nn.Module = StepModule(method)
    if distributed:
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device is not None and device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)
    if compile:
        step = torch.compile(step, **(compile_options or {}))
    return step


def forward_backward(step: nn.Module, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext,
                     device: torch.device, dtype: Optional[torch.dtype], scaler=None, divide: int = 1) -> StepOutput:
    """Forward and loss under autocast, then backward of ``loss / divide`` (gradients accumulate)."""
    with autocast(device, dtype):
        out = step(images, targets, ctx)
    loss = out.loss.float() / divide
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return out


def clip_gradients(params: Sequence[torch.Tensor], clip: Optional[float], optimizer: torch.optim.Optimizer,
                   scaler=None) -> torch.Tensor:
    """Unscales (fp16) and clips the global gradient norm; returns the norm before clipping (a tensor)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    return torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))


def apply_update(optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """The optimizer step (through the fp16 scaler, which skips non-finite steps itself), then zero grads."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
