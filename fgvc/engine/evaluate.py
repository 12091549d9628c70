"""Inference over a split: the method's fixed ``forward`` rule, sharded over ranks, robust to OOM.

Every rank evaluates the images ``rank, rank + world, ...`` (no padding, so no image counts twice) and the
logits are gathered in dataset order. When the GPU runs out of memory the batch is halved and the
remaining images are retried; the result is the same, only slower.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data.dataset import (
    ImageDataset,
    leave_signals_to_the_main_process,
    start_workers,
)
from ..data.record import Record
from ..progress import progress_bar, say
from .distributed import DistInfo, gather_objects
from .precision import autocast


@torch.no_grad()
def predict_split(model: nn.Module, records: Sequence[Record], transform: Callable, *, batch_size: int,
                  device: torch.device, amp_dtype: Optional[torch.dtype] = None, info: Optional[DistInfo] = None,
                  num_workers: int = 0, bad_data: str = "raise", channels_last: bool = False,
                  progress: bool = False, desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor, int]:
    """Logits of every record, in record order.

    Returns:
        ``(logits [N, K] float32, targets [N], excluded)``: with ``bad_data=skip`` unreadable images are
        left out (``excluded`` counts them; their rows are dropped from both tensors).
    """
    info = info or DistInfo(device=device)
    was_training = model.training
    model.eval()
    dataset = ImageDataset(records, transform, bad_data=bad_data)
    mine = list(range(info.rank, len(dataset), info.world_size))
    results: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    done = 0
    bar = None
    if progress and info.is_main:
        bar = progress_bar(total=len(mine), desc=desc, unit="img", leave=False)
    while done < len(mine):
        loader = DataLoader(Subset(dataset, mine[done:]), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=device.type == "cuda",
                            worker_init_fn=leave_signals_to_the_main_process,
                            generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
        try:
            for images, labels, idx, bad in start_workers(loader):
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(device, amp_dtype):
                    logits = model(images)
                keep = bad < 0
                results.append((idx[keep], logits.float().cpu()[keep], labels[keep]))
                done += len(labels)
                if bar:
                    bar.update(len(labels))
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            say(f"warning: out of memory during {desc}; retrying with batch size {batch_size}")
    if bar:
        bar.close()
    model.train(was_training)
    if results:
        idx = torch.cat([r[0] for r in results])
        logits = torch.cat([r[1] for r in results])
        targets = torch.cat([r[2] for r in results])
    else:
        idx, logits, targets = torch.zeros(0, dtype=torch.long), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    parts = gather_objects((idx, logits, targets), info)
    idx = torch.cat([p[0] for p in parts])
    order = idx.argsort()
    logits = torch.cat([p[1] for p in parts if p[1].numel()])[order] if idx.numel() else logits
    targets = torch.cat([p[2] for p in parts])[order]
    excluded = len(dataset) - int(idx.numel())
    return logits, targets, excluded
