"""The training data order: seeded per epoch, sharded over ranks, resumable mid-epoch.

Epoch ``e`` shuffles the dataset with a generator seeded by ``(seed, e)``; rank ``r`` of ``W`` takes
positions ``r, r + W, ...`` of that permutation (the tail that does not divide evenly is dropped), so
one process with batch ``W * b`` and ``W`` processes with batch ``b`` see the same images at every step.
``set_epoch(e, start)`` skips the first ``start`` samples of this rank's shard, which is how a resumed
run continues exactly where it stopped. Items are ``(index, epoch)`` so the dataset can seed its
augmentation per sample (see :mod:`fgvc.data.dataset`).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Shuffled, sharded, resumable sampler yielding ``(index, epoch)``.

    Args:
        size: Dataset length.
        seed: Base seed of the shuffles.
        rank: This process's rank.
        world_size: Number of processes.
        shuffle: Shuffle every epoch (training) or keep dataset order.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    @property
    def shard_size(self) -> int:
        return self.size // self.world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Selects the epoch's permutation and skips the first ``start`` samples of this rank's shard."""
        self.epoch = epoch
        self.start = start

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's indices for ``epoch``, from the beginning."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.size, generator=g)
        else:
            perm = torch.arange(self.size)
        return perm[: self.shard_size * self.world_size][self.rank:: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order(self.epoch)[self.start:].tolist():
            yield (i, self.epoch)

    def __len__(self) -> int:
        return max(self.shard_size - self.start, 0)
