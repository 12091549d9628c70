"""What a run writes while it trains: ``metrics.jsonl`` (and TensorBoard), and the running means of the
training values between two log lines.

The window keeps its sums as tensors on the device, so logging costs no synchronization per step; they
are reduced over ranks and turned into numbers once per log line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..methods.base import StepOutput
from ..report.metrics import METRICS_FILE
from .distributed import DistInfo, all_reduce_sum


class RunLog:
    """Rank 0's ``metrics.jsonl`` (one JSON record per line) and optional TensorBoard scalars."""

    def __init__(self, run_dir: Path, info: DistInfo, tensorboard: bool = False):
        self.path = run_dir / METRICS_FILE
        self.info = info
        self._file = None
        self._tb = None
        if tensorboard and info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("note: train.tensorboard needs the tensorboard package (pip install 'fgvc[tensorboard]')")

    def write(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()


class Window:
    """Sums of the loss, the method's logged terms and the training accuracy since the last log line."""

    def __init__(self):
        self.sums: dict[str, Any] = {}
        self.micro_batches = 0
        self.images = 0

    def add(self, out: StepOutput, targets: torch.Tensor) -> None:
        values = {"loss": out.loss.detach().float(), **out.logs}
        if out.logits is not None:
            values["train_acc"] = (out.logits.argmax(1) == targets).float().mean() * 100
        for k, v in values.items():
            v = v.detach().float() if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.micro_batches += 1
        self.images += len(targets)

    def means(self, info: DistInfo) -> dict[str, float]:
        """Means over the window's micro-batches and over ranks (a collective: every rank calls it)."""
        keys = sorted(self.sums)
        vec = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=info.device) for k in keys]) \
            if keys else torch.zeros(0, device=info.device)
        vec = all_reduce_sum(vec, info) / (max(self.micro_batches, 1) * info.world_size)
        return dict(zip(keys, vec.tolist()))



__all__ = ["RunLog", "Window"]
