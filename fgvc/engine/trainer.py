"""The training loop, read top to bottom.

One process, CPU or GPU::

    fgvc train configs/transfg/cub.yaml data.root=/data/CUB_200_2011

One node, 8 GPUs (data.batch_size is per process)::

    torchrun --nproc_per_node=8 -m fgvc train configs/transfg/cub.yaml data.root=...

Several nodes (run on each, with its own --node_rank)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=host0:29500 --max-restarts=3 -m fgvc train ... --out runs/x --resume auto

What the engine promises (docs/reliability.md): atomic, verified checkpoints; exact resume (model, EMA,
optimizer, scaler, step, epoch, position inside the epoch, RNG states per rank, method state); a
SIGTERM/SIGINT saves at the next step boundary and exits with code 75; a non-finite loss or gradient norm
on any rank stops the step on every rank before the optimizer touches anything; bad images raise or are
skipped and counted; the test split is evaluated once, with the method's fixed rule, and never used to
choose a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import __version__
from ..config import RunConfig, save_config, to_dict
from ..data import build_index, check_images, make_splits
from ..data.dataset import ImageDataset
from ..data.transforms import build_eval_transform, build_train_transform
from ..errors import CheckpointError, ConfigError, DataError, FgvcError, TrainingError
from ..losses import build_criterion
from ..methods.base import Method, StepContext
from ..registry import create_model_from_config, validate_config
from . import checkpoint as ckpt
from .distributed import (DistInfo, all_reduce_max, all_reduce_sum, barrier, broadcast_object, cleanup,
                          gather_objects, setup)
from .evaluate import autocast, predict_split
from .metrics import classification_report, confusion_matrix, report_markdown
from .sampler import ResumableSampler

EXIT_PREEMPTED = 75  # SIGTERM/SIGINT: saved, exit so that a restart with --resume auto continues

# Settings that may change between a run and its resume without changing the result.
_RESUME_FREE = {"name", "out", "device", "data.root", "data.num_workers", "data.eval_batch_size",
                "data.check_images", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
                "train.tensorboard", "train.record_sample_ids", "train.eval_every", "eval", "reference"}


class Preempted(Exception):
    """Raised after the state was saved on a SIGTERM/SIGINT; the CLI exits with EXIT_PREEMPTED."""

    def __init__(self, path: Path):
        super().__init__(f"stopped by a signal; state saved to {path}; continue with --resume auto")
        self.path = path


@dataclass
class TrainResult:
    run_dir: Path
    test: Optional[dict[str, Any]]
    steps: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_factor(update: int, cfg, total_steps: int, steps_per_epoch: int) -> float:
    """LR multiplier of the ``update``-th optimizer step (1-based): linear warm-up, then the schedule."""
    warm = cfg.warmup_steps
    if warm and update <= warm:
        return update / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = (update - 1) // max(steps_per_epoch, 1)
        return cfg.step_gamma ** math.floor(epoch / cfg.step_epochs)
    progress = (update - warm) / max(total_steps - warm, 1)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


class _TrainStep(nn.Module):
    """Routes DDP's forward through the method's training step, so gradient sync hooks fire."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, images, targets, ctx):
        return self.method.training_step(images, targets, ctx)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("method", "options", "backbone_args"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ in a way that changes the result of a resumed run."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k in _RESUME_FREE or k.split(".")[0] in _RESUME_FREE:
            continue
        if a.get(k) != b.get(k):
            diffs.append(f"{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return diffs


class Trainer:
    """Owns one run: data, model, optimizer, the loop, checkpoints and the final report."""

    def __init__(self, cfg: RunConfig, resume: Optional[str] = None, allow_mismatch: bool = False,
                 progress: bool = True):
        self.cfg = cfg
        self.info: DistInfo = setup(cfg.device)
        self.progress = progress and self.info.is_main
        self.allow_mismatch = allow_mismatch
        self.run_dir, self.resume_from = self._resolve_run_dir(resume)
        self.stop_requested = False
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.bad_samples: set[int] = set()
        self.nonfinite_skipped = 0
        self.best_val: Optional[float] = None
        self._log_file = None
        self._tb = None

    # ---------------------------------------------------------------------------------------------
    # Set-up

    def _resolve_run_dir(self, resume: Optional[str]) -> tuple[Path, Optional[Path]]:
        cfg = self.cfg
        if resume and resume != "auto":
            target = Path(resume)
            if not target.exists():
                raise CheckpointError(f"--resume: {target} does not exist")
            return (target if target.is_dir() else target.parent), (target if target.is_file() else None)
        if cfg.out:
            run_dir = Path(cfg.out)
        else:
            if resume == "auto":
                raise ConfigError("--resume auto needs the run folder: pass --out DIR (or out=DIR)")
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = Path("runs") / f"{cfg.name}-{stamp}"
        run_dir = Path(broadcast_object(str(run_dir), self.info))
        if not resume and (run_dir / ckpt.LAST).exists():  # every rank raises: none waits for the others
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume auto, "
                              "or choose another --out")
        return run_dir, None

    def _build(self) -> None:
        cfg, info = self.cfg, self.info
        validate_config(cfg)
        if cfg.train.select == "best_val" and cfg.data.val_fraction <= 0:
            raise ConfigError("train.select=best_val needs a validation split: set data.val_fraction (e.g. 0.1)")
        seed_everything(cfg.train.seed)
        # Rank 0 generates the synthetic data (if needed) before the others read it.
        index = self._rank0_first(lambda: build_index(cfg.data, progress=self.progress))
        self.index = index
        self.splits = make_splits(index, cfg.data, cfg.train.seed)
        if cfg.data.check_images:
            bad = self._rank0_first(lambda: check_images(self.splits.train + self.splits.val + self.splits.test),
                                    others=lambda: None)
            bad = broadcast_object(bad, info)
            if bad and cfg.data.bad_data == "raise":
                listing = "; ".join(f"{p} ({why})" for _, p, why in bad[:5])
                raise DataError(f"{len(bad)} unreadable image(s): {listing}"
                                f"{' ...' if len(bad) > 5 else ''} (data.bad_data=skip trains without them)")
            for _, p, why in bad if info.is_main else []:
                print(f"warning: unreadable image {p}: {why}")

        seed_everything(cfg.train.seed)  # the model's initialization depends on the seed only
        self.model: Method = create_model_from_config(cfg, index.num_classes).to(info.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        mean, std = self.model.mean_std
        mean, std = cfg.data.mean or mean, cfg.data.std or std
        self.train_tf = build_train_transform(cfg.data, mean, std)
        self.eval_tf = build_eval_transform(cfg.data, mean, std)
        self.train_set = ImageDataset(self.splits.train, self.train_tf, seed=cfg.train.seed, bad_data=cfg.data.bad_data)
        self.sampler = ResumableSampler(len(self.train_set), seed=cfg.train.seed, rank=info.rank,
                                        world_size=info.world_size)
        self.micro_per_epoch = self.sampler.shard_size // cfg.data.batch_size
        if self.micro_per_epoch == 0:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training images per "
                              f"process ({self.sampler.shard_size})")
        accum = cfg.train.grad_accum
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / accum)
        self.total_steps = cfg.train.steps or cfg.train.epochs * self.steps_per_epoch
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        t = cfg.train
        groups = self.model.param_groups(t.lr, t.head_lr_scale, t.weight_decay)
        for g in groups:
            g["base_lr"] = g["lr"]
        if t.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))
        self.amp = amp_dtype(t.amp, info.device)
        if self.amp is not None and info.device.type == "cpu" and t.amp != "auto":
            print("note: mixed precision on the CPU is slow; train.amp=none is usually faster there")
        self.scaler = torch.amp.GradScaler(info.device.type) if self.amp == torch.float16 else None
        self.ema = None
        if t.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=t.ema_decay)
        self.criterion = build_criterion(t.loss, t.label_smoothing, t.gce_k)
        step_module: nn.Module = _TrainStep(self.model)
        if info.distributed:
            step_module = nn.parallel.DistributedDataParallel(
                step_module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=t.find_unused_parameters)
        if t.compile:
            step_module = torch.compile(step_module)
        self.step_module = step_module

    def _rank0_first(self, fn, others=None):
        """Runs ``fn`` on rank 0, then (``others`` or ``fn``) on the other ranks. A user error on rank 0 is
        raised on every rank, so no process waits forever for one that stopped."""
        failure = None
        if self.info.is_main:
            try:
                result = fn()
            except FgvcError as e:
                failure = e
        message = broadcast_object(None if failure is None else str(failure), self.info)  # also a barrier
        if failure is not None:
            raise failure
        if message is not None:
            raise DataError(message)
        return result if self.info.is_main else (others or fn)()

    # ---------------------------------------------------------------------------------------------
    # Checkpoints

    def _labels(self) -> dict[str, Any]:
        return {"dataset": self.index.name, "fingerprint": self.index.fingerprint(),
                "class_names": self.index.class_names, "class_ids": self.index.class_ids}

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly (collective: every rank must call it)."""
        rngs = gather_objects(rng_state(), self.info)
        return {
            "format": "fgvc/1", "fgvc_version": __version__, "time": time.time(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
            "rng": rngs, "world_size": self.info.world_size,
            "method_state": self.model.state_for_checkpoint(),
            "labels": self._labels(), "config": to_dict(self.cfg),
            "bad_samples": sorted(self.bad_samples), "nonfinite_skipped": self.nonfinite_skipped,
            "best_val": self.best_val,
        }

    def save(self, name: Optional[str] = None) -> Path:
        """Writes ``last.pt`` (and ``step-N.pt`` when ``train.keep_checkpoints`` > 0) from rank 0."""
        state = self.state()
        barrier(self.info)
        path = self.run_dir / (name or ckpt.LAST)
        if self.info.is_main:
            ckpt.save_checkpoint(state, path)
            if name is None and self.cfg.train.keep_checkpoints > 0:
                ckpt.save_checkpoint(state, self.run_dir / f"step-{self.step}.pt")
                ckpt.prune_step_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)
        barrier(self.info)
        return path

    def _restore(self) -> None:
        found = None
        if self.resume_from is not None:
            found = (self.resume_from, ckpt.load_checkpoint(self.resume_from))
        elif (self.run_dir / ckpt.LAST).exists() or ckpt.step_checkpoints(self.run_dir):
            found = ckpt.find_resumable(self.run_dir)
            if found is None:
                raise CheckpointError(f"{self.run_dir}: no valid checkpoint to resume from")
        if found is None:
            return
        path, state = found
        problems = []
        if state.get("world_size") != self.info.world_size:
            problems.append(f"it was saved by {state.get('world_size')} process(es), this run has "
                            f"{self.info.world_size} (the data order would change)")
        if state["labels"].get("fingerprint") != self.index.fingerprint():
            problems.append("the dataset differs (other images, labels or splits)")
        diffs = config_differences(state["config"], to_dict(self.cfg))
        if diffs:
            problems.append("the config differs: " + "; ".join(diffs[:6]))
        if problems and not self.allow_mismatch:
            raise CheckpointError(f"cannot resume from {path}: " + " and ".join(problems)
                                  + " (--allow-mismatch resumes anyway)")
        self.model.load_state_dict(state["model"])
        self.model.load_checkpoint_state(state.get("method_state") or {})
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batches_in_epoch = state["batches_in_epoch"]
        rngs = state["rng"]
        set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        self.bad_samples = set(state.get("bad_samples", []))
        self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
        self.best_val = state.get("best_val")
        if self.info.is_main:
            print(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batches_in_epoch})")

    # ---------------------------------------------------------------------------------------------
    # Logging

    def log(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        if self._log_file is None:
            self._log_file = open(self.run_dir / "metrics.jsonl", "a")
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record.get("step", 0))

    def _write_run_files(self) -> None:
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "labels.json").write_text(json.dumps(self._labels(), indent=1))
        if self.cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                print("note: train.tensorboard needs the tensorboard package (pip install 'fgvc[tensorboard]')")

    # ---------------------------------------------------------------------------------------------
    # The loop

    def _on_signal(self, signum, frame) -> None:
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.stop_requested = True
        if self.info.is_main:
            print(f"\n{signal.Signals(signum).name}: saving at the next step boundary, then stopping",
                  file=sys.stderr)

    def _loader(self) -> DataLoader:
        c = self.cfg.data
        # Its own generator: creating an iterator must not consume the global RNG that methods draw from,
        # or a resumed run (which creates one more iterator) would drift from an uninterrupted one.
        return DataLoader(self.train_set, batch_size=c.batch_size, sampler=self.sampler, num_workers=c.num_workers,
                          drop_last=True, pin_memory=self.info.device.type == "cuda",
                          persistent_workers=False, prefetch_factor=4 if c.num_workers > 0 else None,
                          generator=torch.Generator().manual_seed(self.cfg.train.seed))

    def fit(self) -> TrainResult:
        """Trains, then evaluates the test split once. Returns the run folder and the test report."""
        try:
            self._build()
            self._restore()
            self._write_run_files()
            if self.info.is_main:
                self._announce()
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
                if _is_main_thread() else {}
            try:
                self._train_loop()
            finally:
                for s, h in handlers.items():
                    signal.signal(s, h)
            test = self._final_test()
            return TrainResult(self.run_dir, test, self.step)
        finally:
            if self._log_file:
                self._log_file.close()
            if self._tb:
                self._tb.close()
            cleanup()

    def _announce(self) -> None:
        cfg, s = self.cfg, self.splits
        n_params = sum(p.numel() for p in self.model.parameters()) / 1e6
        print(f"run folder: {self.run_dir}")
        print(f"data: {self.index.name} at {self.index.root}: {self.index.num_classes} classes, "
              f"{len(s.train)} train / {len(s.val)} val / {len(s.test)} test images")
        for note in self.index.notes:
            print(f"note: {note}")
        print(f"model: {cfg.model.method} on {cfg.model.backbone} ({n_params:.1f}M parameters) at "
              f"{cfg.data.img_size}px, device {self.info.device}"
              f"{f' x {self.info.world_size} processes' if self.info.distributed else ''}, "
              f"precision {self.amp or 'float32'}")
        print(f"training: {self.total_steps} steps ({self.total_epochs} epochs of {self.steps_per_epoch}), "
              f"global batch {cfg.data.batch_size * self.info.world_size * cfg.train.grad_accum}")

    def _train_loop(self) -> None:
        cfg, info, t = self.cfg, self.info, self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        accum = t.grad_accum
        window: dict[str, torch.Tensor] = {}
        window_n, window_imgs, window_t0 = 0, 0, time.perf_counter()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       mininterval=0.5 if sys.stderr.isatty() else 30)
        ddp = isinstance(self.step_module, nn.parallel.DistributedDataParallel)
        self.model.train()
        while self.step < self.total_steps:
            self.model.on_epoch_start(self.epoch, self.total_epochs)
            self.sampler.set_epoch(self.epoch, start=self.batches_in_epoch * cfg.data.batch_size)
            for images, targets, idx, bad in self._loader():
                pos = self.batches_in_epoch
                group_start = (pos // accum) * accum
                group_size = min(accum, self.micro_per_epoch - group_start)
                last_in_group = pos == group_start + group_size - 1
                if pos == group_start:  # buffers (BN statistics, WS-DAN centers) as they were before this step
                    buffers = [b.detach().clone() for b in self.model.buffers()]
                self._count_bad(bad)
                if t.record_sample_ids and info.is_main:
                    with open(self.run_dir / "sample_ids.txt", "a") as fh:
                        fh.write(f"{self.step} {self.epoch} " + ",".join(map(str, idx.tolist())) + "\n")
                images = images.to(info.device, non_blocking=True)
                targets = targets.to(info.device, non_blocking=True)
                if t.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                ctx = StepContext(step=self.step, epoch=self.epoch, total_steps=self.total_steps,
                                  total_epochs=self.total_epochs, criterion=self.criterion)
                sync = contextlib.nullcontext() if (last_in_group or not ddp) else self.step_module.no_sync()
                try:
                    with sync:
                        with autocast(info.device, self.amp):
                            out = self.step_module(images, targets, ctx)
                        loss = out.loss.float() / group_size
                        (self.scaler.scale(loss) if self.scaler else loss).backward()
                except torch.OutOfMemoryError:
                    peak = torch.cuda.max_memory_allocated() / 2**30 if info.device.type == "cuda" else float("nan")
                    raise TrainingError(
                        f"out of memory at data.batch_size={cfg.data.batch_size} per process (peak {peak:.1f} GiB "
                        f"on {info.device}); lower it, e.g. data.batch_size={max(1, cfg.data.batch_size // 2)} "
                        f"train.grad_accum={accum * 2} keeps the global batch") from None
                self.batches_in_epoch += 1
                window["loss"] = window.get("loss", 0.0) + out.loss.detach().float()
                for k, v in out.logs.items():
                    window[k] = window.get(k, 0.0) + (v.detach().float() if torch.is_tensor(v) else float(v))
                if out.logits is not None:
                    window["train_acc"] = window.get("train_acc", 0.0) + \
                        (out.logits.argmax(1) == targets).float().mean() * 100
                window_n += 1
                window_imgs += len(targets)
                if not last_in_group:
                    continue

                # -- one optimizer step ----------------------------------------------------------------
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)
                gnorm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad if t.clip_grad else float("inf"))
                flags = torch.tensor([0.0 if torch.isfinite(gnorm) and torch.isfinite(out.loss.detach()) else 1.0,
                                      1.0 if self.stop_requested else 0.0], device=info.device)
                nonfinite, stop = (all_reduce_max(flags, info) > 0).tolist()
                if nonfinite and self.scaler is None:
                    self.optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():  # the step's forward passes changed nothing either
                        for b, saved in zip(self.model.buffers(), buffers):
                            b.copy_(saved)
                    self._handle_nonfinite(out.loss, gnorm)
                else:
                    for g in self.optimizer.param_groups:
                        g["lr"] = g["base_lr"] * lr_factor(self.step + 1, t, self.total_steps, self.steps_per_epoch)
                    if self.scaler:  # fp16: the scaler skips inf/nan steps by itself and lowers its scale
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                    else:
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update(self.model, step=self.step)
                self.step += 1
                if bar:
                    bar.update(1)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    rec = self._log_window(window, window_n, window_imgs, time.perf_counter() - window_t0, gnorm)
                    if bar:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}",
                                        img_s=f"{rec['img_per_s']:.0f}")
                    window, window_n, window_imgs, window_t0 = {}, 0, 0, time.perf_counter()
                if stop:
                    path = self.save()
                    if bar:
                        bar.close()
                    raise Preempted(path)
                if t.ckpt_every and self.step % t.ckpt_every == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
            if self.batches_in_epoch >= self.micro_per_epoch:
                self.epoch += 1
                self.batches_in_epoch = 0
                self._end_of_epoch()
        if bar:
            bar.close()
        self.save()

    def _count_bad(self, bad: torch.Tensor) -> None:
        if self.cfg.data.bad_data != "skip":
            return
        new = {int(b) for b in bad.tolist() if b >= 0}
        all_new = set().union(*gather_objects(new, self.info)) if self.info.distributed else new
        fresh = all_new - self.bad_samples
        if fresh and self.info.is_main:
            for i in sorted(fresh):
                print(f"warning: skipped unreadable image {self.train_set.records[i].path} (index {i})")
        self.bad_samples |= all_new
        if len(self.bad_samples) > self.cfg.data.skip_budget:
            raise DataError(f"{len(self.bad_samples)} unreadable images exceed data.skip_budget="
                            f"{self.cfg.data.skip_budget}; run fgvc data verify on the dataset")

    def _handle_nonfinite(self, loss: torch.Tensor, gnorm: torch.Tensor) -> None:
        t = self.cfg.train
        what = f"loss {float(loss):.4g}, gradient norm {float(gnorm):.4g} on rank {self.info.rank}"
        if t.nonfinite == "skip":
            self.nonfinite_skipped += 1
            if self.info.is_main:
                print(f"warning: non-finite step {self.step + 1} skipped ({what}); "
                      f"{self.nonfinite_skipped} skipped so far")
            if self.nonfinite_skipped > t.nonfinite_budget:
                raise TrainingError(f"{self.nonfinite_skipped} non-finite steps exceed train.nonfinite_budget="
                                    f"{t.nonfinite_budget}; lower train.lr or set train.clip_grad")
            return
        path = self.save("nonfinite.pt")
        raise TrainingError(f"non-finite loss or gradient at step {self.step + 1} (epoch {self.epoch}); no weight "
                            f"was updated by it. The state before it is in {path}. Lower train.lr, set "
                            "train.clip_grad, or set train.nonfinite=skip")

    def _log_window(self, window, n, imgs, seconds, gnorm) -> dict[str, Any]:
        keys = sorted(window)
        vec = torch.stack([torch.as_tensor(window[k], dtype=torch.float32, device=self.info.device) for k in keys]) \
            if keys else torch.zeros(0, device=self.info.device)
        vec = all_reduce_sum(vec, self.info) / (max(n, 1) * self.info.world_size)
        rec = {"kind": "train", "step": self.step, "epoch": self.epoch,
               "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": float(gnorm),
               "img_per_s": imgs * self.info.world_size / max(seconds, 1e-9)}
        rec.update({k: float(v) for k, v in zip(keys, vec.tolist())})
        if self.info.device.type == "cuda":
            rec["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.log(rec)
        return rec

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _evaluate(self, records, desc: str) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        c = self.cfg
        logits, targets, excluded = predict_split(
            self._eval_model(), records, self.eval_tf, batch_size=c.data.eval_batch_size, device=self.info.device,
            amp_dtype=self.amp, info=self.info, num_workers=c.data.num_workers, bad_data=c.data.bad_data,
            channels_last=c.train.channels_last, progress=self.progress, desc=desc)
        report = classification_report(logits, targets, self.index.class_names, c.eval.topk, c.eval.confused_pairs)
        report["excluded_unreadable"] = excluded
        return report, logits, targets

    def _end_of_epoch(self) -> None:
        c = self.cfg
        if self.splits.val and c.train.eval_every and self.epoch % c.train.eval_every == 0:
            report, _, _ = self._evaluate(self.splits.val, "val")
            self.log({"kind": "val", "step": self.step, "epoch": self.epoch, "top1": report["top1"],
                      f"top{c.eval.topk}": report[f"top{c.eval.topk}"], "mean_class_acc": report["mean_class_acc"]})
            if self.info.is_main:
                print(f"epoch {self.epoch}: val top-1 {report['top1']:.2f}%")
            if self.best_val is None or report["top1"] > self.best_val:
                self.best_val = report["top1"]
                self.save(ckpt.BEST)
        if not c.train.ckpt_every and self.step < self.total_steps:
            self.save()

    def _final_test(self) -> Optional[dict[str, Any]]:
        c = self.cfg
        if c.train.select == "best_val" and (self.run_dir / ckpt.BEST).exists():
            state = ckpt.load_checkpoint(self.run_dir / ckpt.BEST, map_location=self.info.device)
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            chosen = f"best validation checkpoint (step {state['step']})"
        else:
            chosen = f"final weights (step {self.step})"
        if not self.splits.test:
            return None
        report, logits, targets = self._evaluate(self.splits.test, "test")
        report["weights"] = chosen + (" with EMA" if self.ema is not None else "")
        report["rule"] = f"{c.model.method}.forward (the method's fixed inference rule)"
        report["skipped_unreadable_train"] = len(self.bad_samples)
        report["nonfinite_steps_skipped"] = self.nonfinite_skipped
        self.log({"kind": "test", "step": self.step, "top1": report["top1"],
                  f"top{c.eval.topk}": report[f"top{c.eval.topk}"], "mean_class_acc": report["mean_class_acc"]})
        if self.info.is_main:
            write_report(self.run_dir / "report", report, "test", c.eval.topk,
                         confusion_matrix(logits, targets, self.index.num_classes)
                         if self.index.num_classes <= 1000 else None,
                         {"weights": report["weights"], "rule": report["rule"],
                          "unreadable training images skipped": report["skipped_unreadable_train"],
                          "non-finite steps skipped": report["nonfinite_steps_skipped"]})
            if c.eval.explain_samples > 0:
                from ..explain import explain_records

                n = len(self.splits.test)
                picks = [self.splits.test[i] for i in
                         np.linspace(0, n - 1, min(c.eval.explain_samples, n)).round().astype(int)]
                explain_records(self._eval_model(), picks, self.eval_tf,
                                self.index.class_names, self.run_dir / "report" / "explain", self.info.device,
                                mean_std=(c.data.mean or self.model.mean_std[0], c.data.std or self.model.mean_std[1]))
            print(f"test: top-1 {report['top1']:.2f}%, top-{c.eval.topk} {report[f'top{c.eval.topk}']:.2f}%, "
                  f"mean per-class {report['mean_class_acc']:.2f}% on {report['num_images']} images "
                  f"({report['weights']})")
            if self.bad_samples:
                print(f"skipped {len(self.bad_samples)} unreadable training image(s) (data.bad_data=skip): "
                      + ", ".join(self.train_set.records[i].path for i in sorted(self.bad_samples)[:5]))
            if self.nonfinite_skipped:
                print(f"skipped {self.nonfinite_skipped} non-finite step(s) (train.nonfinite=skip)")
            print(f"report: {self.run_dir / 'report' / 'test.md'}")
        return report


def write_report(folder: Path, report: dict[str, Any], split: str, topk: int,
                 confusion: Optional[np.ndarray] = None, extra: Optional[dict[str, Any]] = None) -> None:
    """Writes ``<split>.json``, ``<split>.md`` and the confusion matrix into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.json").write_text(json.dumps(report, indent=1))
    (folder / f"{split}.md").write_text(report_markdown(report, f"{split} split", topk, extra))
    if confusion is not None:
        np.save(folder / f"{split}_confusion.npy", confusion)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: RunConfig, resume: Optional[str] = None, allow_mismatch: bool = False,
          progress: bool = True) -> TrainResult:
    """Trains the run a config describes (see the module docstring); the library entry point."""
    return Trainer(cfg, resume=resume, allow_mismatch=allow_mismatch, progress=progress).fit()


__all__ = ["train", "Trainer", "TrainResult", "Preempted", "EXIT_PREEMPTED", "lr_factor"]
