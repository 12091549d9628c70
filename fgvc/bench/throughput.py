"""Throughput and memory of a method: training images/s, inference images/s, peak memory, loader images/s,
and the same figures for the plain backbone beside it.

``fgvc bench transfg`` builds the method on its paper recipe's backbone at the recipe's resolution and
batch (random weights: nothing is downloaded), feeds it random images (so the data pipeline is not in the
way), runs warm-up steps, then times full training steps (forward, loss, backward, clipping, SGD update:
the trainer's own step functions, :mod:`fgvc.engine.step`) and inference passes. With ``--plain`` it
measures the plain fine-tuning step of the same backbone at the same input first, in the same process,
and reports the ratio. The data loader is measured on its own, decoding and augmenting generated JPEGs of
a typical dataset size, so its figure can be set beside the training figure. ``--compile`` reports the
compilation time separately; it is never counted in the throughput.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import read_yaml
from ..engine.distributed import resolve_device
from ..engine.precision import amp_dtype, autocast
from ..engine.step import apply_update, clip_gradients, forward_backward, wrap_step
from ..losses import build_criterion
from ..methods import create_model
from ..methods.base import StepContext
from ..recipes import paper_recipe


@dataclass
class BenchSetting:
    """What one measurement runs: method, backbone, input size, batch and the method's options."""

    method: str
    backbone: str
    img_size: int
    batch: int
    method_options: dict
    backbone_args: dict
    channels_last: bool = False


def recipe_setting(method: str, backbone: Optional[str] = None, img_size: Optional[int] = None,
                   batch: Optional[int] = None, method_options: Optional[dict] = None,
                   backbone_args: Optional[dict] = None) -> BenchSetting:
    """The method's paper setting (its CUB recipe: backbone, resolution, batch, options), with overrides.
    A backbone other than the recipe's keeps the recipe's options but not its backbone arguments."""
    recipe = read_yaml(paper_recipe(method))
    model, data = recipe.get("model", {}), recipe.get("data", {})
    same_backbone = backbone is None or backbone == model.get("backbone")
    return BenchSetting(method=method, backbone=backbone or model.get("backbone", "resnet50"),
                        img_size=img_size or data.get("img_size", 224), batch=batch or data.get("batch_size", 16),
                        method_options={**recipe.get("method", {}), **(method_options or {})},
                        backbone_args={**(model.get("backbone_args", {}) if same_backbone else {}),
                                       **(backbone_args or {})},
                        channels_last=bool(recipe.get("train", {}).get("channels_last", False)))


def plain_setting(s: BenchSetting) -> BenchSetting:
    """The plain fine-tuning step to compare a method with: the baseline on the same backbone and input; for a
    ViT whose method changes the patch stride (TransFG), at the input that gives the same token count."""
    img = s.img_size
    stride = s.method_options.get("slide_step")
    if stride:
        from ..backbones import create_backbone

        with torch.device("meta"):
            vit = create_backbone(s.backbone, **s.backbone_args)
        patch = vit.patch_embed.proj.kernel_size[0]
        img = patch * ((s.img_size - patch) // stride + 1)
    return BenchSetting("baseline", s.backbone, img, s.batch, {}, dict(s.backbone_args), s.channels_last)


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

    from ..config import DataConfig
    from ..data.dataset import ImageDataset, leave_signals_to_the_main_process
    from ..data.record import Record
    from ..data.transforms import build_train_transform

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
                                             persistent_workers=workers > 0,
                                             worker_init_fn=leave_signals_to_the_main_process)
        n, t0 = 0, None
        for _ in range(2):  # two passes at most, or until `seconds` have passed
            for x, *_ in loader:
                if t0 is None:  # the first batch pays for the workers' start: not counted
                    t0 = time.perf_counter()
                    continue
                n += x.shape[0]
                if time.perf_counter() - t0 > seconds:
                    return n / (time.perf_counter() - t0)
        return n / max(time.perf_counter() - t0, 1e-9)


def measure(s: BenchSetting, steps: int = 20, warmup: int = 5, device: str = "auto", amp: str = "auto",
            channels_last: bool = False, compile: bool = False, num_classes: int = 200,
            infer_batch: Optional[int] = None, profile: Optional[Path] = None,
            compile_options: Optional[dict] = None) -> dict[str, Any]:
    """Training and inference figures of one setting (see the module docstring)."""
    dev = resolve_device(device)
    dtype = amp_dtype(amp, dev)
    channels_last = channels_last or s.channels_last  # the recipe's memory format, or the flag
    torch.manual_seed(0)
    model = create_model(s.method, backbone=s.backbone, num_classes=num_classes, img_size=s.img_size,
                         backbone_args=s.backbone_args, **s.method_options).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    criterion = build_criterion("ce")
    step = wrap_step(model, compile=compile, compile_options=compile_options)
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.randn(s.batch, 3, s.img_size, s.img_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (s.batch,), device=dev)
    losses = []

    def train_step(i: int) -> None:
        for phase in range(model.update_phases()):  # the method's updates on one batch (PMG: four)
            ctx = StepContext(step=i, epoch=0, total_steps=steps + warmup, total_epochs=1, criterion=criterion,
                              phase=phase)
            out = forward_backward(step, x, y, ctx, dev, dtype)
            clip_gradients(params, 1.0, opt)
            apply_update(opt)
        losses.append(out.loss.detach())

    model.train()
    t_first = time.perf_counter()
    train_step(0)  # the first step pays for compilation, cuDNN autotuning and allocations
    _sync(dev)
    first_step_s = time.perf_counter() - t_first
    for i in range(1, warmup):
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
    if profile is not None:
        _profile(lambda: train_step(0), dev, profile, f"{s.method}-{s.backbone}-{s.img_size}")

    model.eval()
    ib = infer_batch or (64 if dev.type == "cuda" else s.batch)
    xi = torch.randn(ib, 3, s.img_size, s.img_size, device=dev)
    if channels_last:
        xi = xi.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model, **(compile_options or {})) if compile else model
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
    return {
        "method": s.method, "backbone": s.backbone, "img_size": s.img_size, "batch": s.batch, "steps": steps,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'cpu'}, "
                                                                             f"{torch.get_num_threads()} threads)",
        "precision": str(dtype).replace("torch.", "") if dtype else "float32", "channels_last": channels_last,
        "compile": compile, "compile_options": compile_options or {}, "first_step_s": first_step_s,
        "train_img_per_s": s.batch * steps / train_time,
        "step_ms": 1000 * train_time / steps, "infer_batch": ib, "infer_img_per_s": ib * n_inf / infer_time,
        "peak_mem_gib": peak, "peak_mem_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process max RSS",
        "last_loss": float(losses[-1]), "date": date.today().isoformat(), "torch": torch.__version__,
        "method_options": s.method_options,
    }


def _profile(fn, dev: torch.device, folder: Path, name: str, steps: int = 3) -> None:
    """A torch.profiler trace (Chrome format) of ``steps`` training steps and the table of the costliest ops."""
    from torch.profiler import ProfilerActivity, profile

    folder.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(steps):
            fn()
        _sync(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    (folder / f"{name}.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=25))
    prof.export_chrome_trace(str(folder / f"{name}.trace.json"))


def bench(method: str, backbone: Optional[str] = None, img_size: Optional[int] = None, batch: Optional[int] = None,
          steps: int = 20, warmup: int = 5, device: str = "auto", amp: str = "auto", channels_last: bool = False,
          compile: bool = False, num_classes: int = 200, infer_batch: Optional[int] = None,
          loader_workers: Optional[int] = None, method_options: Optional[dict[str, Any]] = None,
          backbone_args: Optional[dict[str, Any]] = None, plain: bool = False,
          profile: Optional[Path] = None, compile_options: Optional[dict] = None,
          plain_cache: Optional[dict] = None) -> dict[str, Any]:
    """Measures one method (and, with ``plain``, the plain backbone step beside it); returns the figures."""
    s = recipe_setting(method, backbone, img_size, batch, method_options, backbone_args)
    common = dict(steps=steps, warmup=warmup, device=device, amp=amp, channels_last=channels_last,
                  num_classes=num_classes, infer_batch=infer_batch)
    base = None
    if plain:
        ps = plain_setting(s)
        key = (ps.backbone, ps.img_size, ps.batch, channels_last or ps.channels_last, amp, device)
        cache = plain_cache if plain_cache is not None else {}
        if key not in cache:  # the plain eager step, measured once per setting
            cache[key] = measure(ps, **common, compile=False)
        base = cache[key]
        if resolve_device(device).type == "cuda":
            torch.cuda.empty_cache()
    r = measure(s, **common, compile=compile, profile=profile, compile_options=compile_options)
    if base is not None:
        r["plain"] = {k: base[k] for k in ("method", "img_size", "train_img_per_s", "step_ms", "infer_img_per_s",
                                           "peak_mem_gib")}
        r["step_ratio"] = r["step_ms"] / base["step_ms"]  # method step time / plain step time
    workers = loader_workers if loader_workers is not None else min(16, os.cpu_count() or 1)
    r["loader_workers"] = workers
    r["loader_img_per_s"] = loader_throughput(s.img_size, s.batch, workers) if workers >= 0 else float("nan")
    return r


__all__ = ["bench", "measure", "recipe_setting", "plain_setting", "loader_throughput", "BenchSetting"]
