"""Throughput and memory of a method: training images/s, inference images/s, peak memory, loader images/s.

``fgvc bench transfg --backbone vit_base_patch16_224 --img-size 448 --batch 16 --device cuda`` builds the
method with random weights, feeds it random images (so the data pipeline is not in the way), runs a few
warm-up steps, then times full training steps (forward, loss, backward, clipping, SGD update) and
inference passes. The data loader is measured on its own, decoding and augmenting generated JPEGs of a
typical dataset size, so its figure can be set beside the training figure.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .engine.distributed import resolve_device
from .engine.evaluate import autocast
from .engine.trainer import amp_dtype
from .losses import build_criterion
from .methods.base import StepContext
from .registry import create_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB (process RSS)


def loader_throughput(img_size: int, batch: int, workers: int, images: int = 256, source_size=(500, 375),
                      seconds: float = 10.0) -> float:
    """Images/s of decode + training augmentation through the DataLoader on generated JPEGs."""
    from PIL import Image

    from .config import DataConfig
    from .data.dataset import ImageDataset
    from .data.records import Record
    from .data.transforms import build_train_transform

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        base = (rng.random((source_size[1] // 8, source_size[0] // 8, 3)) * 255).astype(np.uint8)
        img = Image.fromarray(base).resize(source_size, Image.BILINEAR)
        records = []
        for i in range(min(images, 64)):
            p = Path(tmp) / f"{i}.jpg"
            img.rotate(i).save(p, quality=90)
            records.append(Record(path=str(p), label=0, split="train"))
        records = [records[i % len(records)] for i in range(images)]
        cfg = DataConfig(img_size=img_size, resize=int(img_size * 600 / 448))
        ds = ImageDataset(records, build_train_transform(cfg, (0.5,) * 3, (0.5,) * 3))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True,
                                             persistent_workers=workers > 0)
        n, t0 = 0, None
        for _ in range(2):  # two passes at most, or until `seconds` have passed
            for x, *_ in loader:
                if t0 is None:  # the first batch pays for the workers' start: not counted
                    t0 = time.perf_counter()
                    continue
                n += x.shape[0]
                if time.perf_counter() - t0 > seconds:
                    return n / (time.perf_counter() - t0)
        return n / (time.perf_counter() - t0)


def bench(method: str, backbone: str, img_size: int = 224, batch: int = 16, steps: int = 20, warmup: int = 5,
          device: str = "auto", amp: str = "auto", channels_last: bool = False, compile: bool = False,
          num_classes: int = 200, infer_batch: Optional[int] = None, loader_workers: Optional[int] = None,
          method_options: Optional[dict[str, Any]] = None, backbone_args: Optional[dict[str, Any]] = None,
          ) -> dict[str, Any]:
    """Measures one method; returns the figures (see the module docstring)."""
    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev)
    torch.manual_seed(0)
    model = create_model(method, backbone=backbone, num_classes=num_classes, img_size=img_size,
                         backbone_args=backbone_args, **(method_options or {})).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    criterion = build_criterion("ce")
    x = torch.randn(batch, 3, img_size, img_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    step_fn = model.training_step
    if compile:
        step_fn = torch.compile(model.training_step)

    def train_step(i: int) -> None:
        ctx = StepContext(step=i, epoch=0, total_steps=steps + warmup, total_epochs=1, criterion=criterion)
        with autocast(dev, dtype):
            out = step_fn(x, y, ctx)
        out.loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for i in range(warmup):
        train_step(i)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        train_step(warmup + i)
    _sync(dev)
    train_time = time.perf_counter() - t0
    peak = _peak_gib(dev)

    model.eval()
    ib = infer_batch or (64 if dev.type == "cuda" else batch)
    xi = torch.randn(ib, 3, img_size, img_size, device=dev)
    if channels_last:
        xi = xi.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile else model
    with torch.no_grad(), autocast(dev, dtype):
        for _ in range(max(2, warmup // 2)):
            fwd(xi)
        _sync(dev)
        n_inf = max(3, steps // 2)
        t1 = time.perf_counter()
        for _ in range(n_inf):
            fwd(xi)
        _sync(dev)
    infer_time = time.perf_counter() - t1

    workers = loader_workers if loader_workers is not None else min(16, os.cpu_count() or 1)
    loader = loader_throughput(img_size, batch, workers) if workers >= 0 else float("nan")
    return {
        "method": method, "backbone": backbone, "img_size": img_size, "batch": batch, "steps": steps,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'cpu'}, "
                                                                             f"{torch.get_num_threads()} threads)",
        "precision": str(dtype).replace("torch.", "") if dtype else "float32", "channels_last": channels_last,
        "compile": compile, "train_img_per_s": batch * steps / train_time, "infer_batch": ib,
        "infer_img_per_s": ib * n_inf / infer_time, "peak_mem_gib": peak,
        "peak_mem_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process max RSS",
        "loader_img_per_s": loader, "loader_workers": workers, "date": date.today().isoformat(),
        "torch": torch.__version__,
    }
