"""The training loop, read top to bottom.

One process, CPU or GPU::

    fgvc train transfg/cub data.root=/data/CUB_200_2011

One node, 8 GPUs (data.batch_size is per process)::

    torchrun --nproc_per_node=8 -m fgvc train transfg/cub data.root=...

Several nodes (run on each, with its own --node_rank)::

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=host0:29500 --max-restarts=3 -m fgvc train ... --out runs/x --resume auto

What the engine promises (docs/reliability.md): atomic, verified checkpoints; exact resume (model, EMA,
optimizer, scaler, step, epoch, position inside the epoch, RNG states per rank, method state); a
SIGTERM/SIGINT saves at the next step boundary and exits with code 75; a non-finite loss or gradient norm
on any rank stops the step on every rank before the optimizer touches anything; bad images raise or are
skipped and counted; a run that is not learning says so after its first epoch; the test split is
evaluated once, with the method's fixed rule, and never used to choose a checkpoint.

This module keeps the loop. Its helpers live beside it: the optimizer and schedule (:mod:`.optim`),
precision (:mod:`.precision`), one step's pieces (:mod:`.step`), the checkpoint's train state and resume
rules (:mod:`.state`), logging (:mod:`.runlog`), the learning check (:mod:`.health`) and the report
(:mod:`fgvc.report`).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import RunConfig, absolute_paths, check_ranges, fill_legacy, save_config, to_dict
from ..data import build_index, check_images, make_splits
from ..data.cache import cache_key, load_index
from ..data.dataset import (
    ImageDataset,
    leave_signals_to_the_main_process,
    start_workers,
)
from ..data.transforms import Preprocess, build_train_transform, interpolation, normalization
from ..errors import (
    EXIT_PREEMPTED,
    CheckpointError,
    ConfigError,
    DataError,
    FgvcError,
    Preempted,
    TrainingError,
)
from ..losses import build_criterion
from ..methods import create_model_from_config, validate_config
from ..methods.base import Method, StepContext, StepOutput
from ..methods.finetune import is_adapter
from ..progress import on_terminal, progress_bar, say
from ..report import write_final_report
from ..report.metrics import classification_report
from ..version import __version__
from . import checkpoint as ckpt
from .distributed import (
    DistInfo,
    all_reduce_max,
    barrier,
    broadcast_object,
    cleanup,
    gather_objects,
    setup,
)
from .evaluate import predict_split
from .health import LearningCheck
from .optim import build_optimizer, lr_factor, set_lr, warmup_steps
from .precision import amp_dtype, make_scaler
from .runlog import RunLog, Window
from .sampler import ResumableSampler
from .state import resume_problems, rng_state, seed_everything, set_rng_state
from .step import apply_update, clip_gradients, forward_backward, wrap_step


@dataclass
class TrainResult:
    run_dir: Path
    test: Optional[dict[str, Any]]
    steps: int


class Trainer:
    """Owns one run: data, model, optimizer, the loop, checkpoints and the final report."""

    def __init__(self, cfg: RunConfig, resume: Optional[str] = None, allow_mismatch: bool = False,
                 progress: bool = True):
        check_ranges(cfg)  # a config built in Python has not been through load_config
        self.cfg = absolute_paths(cfg)  # config.yaml must work from any folder
        self.info: DistInfo = setup(cfg.device)
        self.progress = progress and self.info.is_main
        self.allow_mismatch = allow_mismatch
        self.run_dir, self.resume_from = self._resolve_run_dir(resume)
        self.stop_requested = False
        self.in_loop = False  # a signal outside the loop (final test) stops at once: last.pt is complete
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.bad_samples: set[int] = set()
        self.nonfinite_skipped = 0
        self.best_val: Optional[float] = None
        self.log: Optional[RunLog] = None
        self.resume_state: Optional[tuple[Path, dict[str, Any]]] = None  # the checkpoint to continue, until applied
        self.last_log: Optional[dict[str, Any]] = None  # the newest training record (for the epoch line)

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
            run_dir = Path("runs") / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(broadcast_object(str(run_dir), self.info))
        if not resume and (run_dir / ckpt.LAST).exists():  # every rank raises: none waits for the others
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume auto, "
                              "or choose another --out")
        return run_dir, None

    def _build(self) -> None:
        cfg, info, t = self.cfg, self.info, self.cfg.train
        validate_config(cfg)
        self.resume_state = self._find_resume_state()
        if t.select == "best_val" and cfg.data.val_fraction <= 0:
            raise ConfigError("train.select=best_val needs a validation split: set data.val_fraction (e.g. 0.1)")
        seed_everything(t.seed)
        # rank 0 reads the dataset (or generates it) and writes RUN/index/; the other ranks map that copy
        cache = self.run_dir / "index"
        self.index = self._rank0_first(lambda: build_index(cfg.data, progress=self.progress, cache=cache),
                                       others=lambda: load_index(cache, cache_key(cfg.data), check_sources=False)
                                       or build_index(cfg.data))
        self.splits = make_splits(self.index, cfg.data, t.seed)
        if cfg.data.check_images:
            self._check_images()

        seed_everything(t.seed)  # the model's initialization depends on the seed only
        with torch.device(info.device):  # parameters are created (and randomly initialized) on the device: fast
            self.model: Method = create_model_from_config(cfg, self.index.num_classes)
        self.model.to(info.device)  # anything a constructor made elsewhere
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.data.interpolation == "auto":  # a resumed run keeps its own; a new one takes the backbone's
            saved = self.resume_state[1]["config"]["data"] if self.resume_state else {}
            cfg.data.interpolation = saved.get("interpolation") or interpolation(cfg.data, self.model)
        mean, std = normalization(cfg.data, self.model)
        self.preprocess = Preprocess.from_config(cfg.data, mean, std)
        self.train_set = ImageDataset(self.splits.train, build_train_transform(cfg.data, mean, std), seed=t.seed,
                                      bad_data=cfg.data.bad_data)
        self.sampler = ResumableSampler(len(self.train_set), seed=t.seed, rank=info.rank, world_size=info.world_size)
        self.micro_per_epoch = self.sampler.shard_size // cfg.data.batch_size
        if self.micro_per_epoch == 0:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training images per "
                              f"process ({self.sampler.shard_size})")
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.grad_accum)
        self.total_steps = t.steps or t.epochs * self.steps_per_epoch
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        self.optimizer = build_optimizer(self.model, t)
        self.amp = amp_dtype(t.amp, info.device)
        if self.amp is not None and info.device.type == "cpu" and t.amp != "auto":
            say("note: mixed precision on the CPU is slow; train.amp=none is usually faster there")
        self.scaler = make_scaler(self.amp, info.device)
        self.ema = None
        if t.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=t.ema_decay)
        self.criterion = build_criterion(t.loss, t.label_smoothing, t.gce_k)
        unused = t.find_unused_parameters or self.model.leaves_parameters_unused
        self.step_module = wrap_step(self.model, distributed=info.distributed, device=info.device,
                                     find_unused_parameters=unused, compile=t.compile,
                                     compile_options=t.compile_options)
        self.learning = LearningCheck(self.index.num_classes, t.learning_check,
                                      f"train.lr={t.lr:g}, new layers x{t.head_lr_scale:g}",
                                      type(self.model).lr_hint, self.steps_per_epoch,
                                      warmup_steps(t, self.total_steps))

    def _check_images(self) -> None:
        bad = self._rank0_first(lambda: check_images(self.splits.train + self.splits.val + self.splits.test),
                                others=lambda: None)
        bad = broadcast_object(bad, self.info)
        if bad and self.cfg.data.bad_data == "raise":
            listing = "; ".join(f"{p} ({why})" for _, p, why in bad[:5])
            raise DataError(f"{len(bad)} unreadable image(s): {listing}"
                            f"{' ...' if len(bad) > 5 else ''} (data.bad_data=skip trains without them)")
        for _, p, why in bad if self.info.is_main else []:
            say(f"warning: unreadable image {p}: {why}")

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

    def _find_resume_state(self) -> Optional[tuple[Path, dict[str, Any]]]:
        """The checkpoint this run continues, read (its saved config read as an earlier run's: fill_legacy);
        None for a new run."""
        found = None
        if self.resume_from is not None:
            found = (self.resume_from, ckpt.load_checkpoint(self.resume_from))
        elif (self.run_dir / ckpt.LAST).exists() or ckpt.step_checkpoints(self.run_dir):
            found = ckpt.find_resumable(self.run_dir)
            if found is None:
                raise CheckpointError(f"{self.run_dir}: no valid checkpoint to resume from")
        if found is not None:
            found[1]["config"] = fill_legacy(found[1]["config"])
        return found

    def _restore(self) -> None:
        found, self.resume_state = self.resume_state, None  # the state is let go once applied
        if found is None:
            return
        path, state = found
        problems = resume_problems(state, self.info.world_size, self.index.fingerprint(), to_dict(self.cfg))
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
            say(f"resumed from {path} at step {self.step} (epoch {self.epoch}, batch {self.batches_in_epoch})")

    # ---------------------------------------------------------------------------------------------
    # The run

    def fit(self) -> TrainResult:
        """Trains, then evaluates the test split once. Returns the run folder and the test report."""
        handlers = {}
        try:
            self._build()
            self._restore()
            self._write_run_files()
            if self.info.is_main:
                self._announce()
            if _is_main_thread():
                handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
            self.in_loop = True
            self._train_loop()
            self.in_loop = False
            test = self._final_test()
            return TrainResult(self.run_dir, test, self.step)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if self.log:
                self.log.close()
            cleanup()

    def _on_signal(self, signum, frame) -> None:
        if not self.in_loop:  # after training: last.pt is complete; --resume auto redoes the final test
            raise Preempted(self.run_dir / ckpt.LAST)
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.stop_requested = True
        if self.info.is_main:
            # a plain print: a signal handler takes no locks (a bar may be drawing)
            print(f"\n{signal.Signals(signum).name}: saving at the next step boundary, then stopping",
                  file=sys.stderr, flush=True)

    def _write_run_files(self) -> None:
        self.log = RunLog(self.run_dir, self.info, self.cfg.train.tensorboard)
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        (self.run_dir / "labels.json").write_text(json.dumps(self._labels(), indent=1))

    def _announce(self) -> None:
        cfg, s = self.cfg, self.splits
        # counted as the model is served: LoRA's adapters are merged into the weights they adapt, adding none
        n_params = sum(p.numel() for name, p in self.model.named_parameters() if not is_adapter(name)) / 1e6
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.log.write({"kind": "model", "parameters": int(n_params * 1e6), "trainable": trainable,
                        "finetune": self.model.finetune})
        say(f"run folder: {self.run_dir}")
        say(f"data: {self.index.name} at {self.index.root}: {self.index.num_classes} classes, "
              f"{len(s.train)} train / {len(s.val)} val / {len(s.test)} test images")
        for note in self.index.notes + self.model.notes:
            say(f"note: {note}")
        if self.model.notes:
            self.log.write({"kind": "notes", "notes": self.model.notes})
        trains = "" if trainable == int(n_params * 1e6) else f", {trainable / 1e6:.2f}M trained ({self.model.finetune})"
        say(f"model: {cfg.model.method} on {cfg.model.backbone} ({n_params:.1f}M parameters{trains}) at "
              f"{cfg.data.img_size}px, device {self.info.device}"
              f"{f' x {self.info.world_size} processes' if self.info.distributed else ''}, "
              f"precision {self.amp or 'float32'}")
        say(f"training: {self.total_steps} steps ({self.total_epochs} epochs of {self.steps_per_epoch}), "
              f"global batch {cfg.data.batch_size * self.info.world_size * cfg.train.grad_accum}")

    def _loader(self) -> DataLoader:
        c = self.cfg.data
        # Its own generator: creating an iterator must not consume the global RNG that methods draw from,
        # or a resumed run (which creates one more iterator) would drift from an uninterrupted one.
        return DataLoader(self.train_set, batch_size=c.batch_size, sampler=self.sampler, num_workers=c.num_workers,
                          drop_last=True, pin_memory=self.info.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if c.num_workers > 0 else None,
                          worker_init_fn=leave_signals_to_the_main_process,
                          generator=torch.Generator().manual_seed(self.cfg.train.seed))

    # ---------------------------------------------------------------------------------------------
    # The loop

    def _train_loop(self) -> None:
        bar = progress_bar(total=self.total_steps, initial=self.step, desc="train", unit="step", mininterval=0.5,
                           enabled=self.progress)
        self.model.train()
        window, window_start = Window(), time.perf_counter()
        while self.step < self.total_steps:
            self.model.on_epoch_start(self.epoch, self.total_epochs)
            self.learning.start_epoch(partial=self.batches_in_epoch > 0)
            self.sampler.set_epoch(self.epoch, start=self.batches_in_epoch * self.cfg.data.batch_size)
            batches = start_workers(self._loader())
            while self.batches_in_epoch < self.micro_per_epoch and self.step < self.total_steps:
                stop, gnorm = self._optimizer_step(batches, window)
                self.step += 1
                if bar:
                    bar.update(1)
                epoch_ends = self.batches_in_epoch >= self.micro_per_epoch
                if self.step % self.cfg.train.log_every == 0 or self.step == self.total_steps or epoch_ends:
                    self.last_log = self._log_window(window, time.perf_counter() - window_start, gnorm)
                    bar.set_postfix(loss=f"{self.last_log['loss']:.3f}", lr=f"{self.last_log['lr']:.2e}",
                                    img_s=f"{self.last_log['img_per_s']:.0f}")
                    window, window_start = Window(), time.perf_counter()
                if stop:
                    path = self.save()
                    bar.close()
                    raise Preempted(path)
                if self.cfg.train.ckpt_every and self.step % self.cfg.train.ckpt_every == 0:
                    self.save()
            if self.batches_in_epoch >= self.micro_per_epoch:
                self.epoch += 1
                self.batches_in_epoch = 0
                self._end_of_epoch()
        bar.close()
        self.save()

    def _optimizer_step(self, batches, window: Window) -> tuple[bool, torch.Tensor]:
        """One step: the micro-batches of one update (gradient accumulation), then, for each of the method's
        update phases (one for most methods), their forward and backward passes, clipping, the non-finite check
        shared by all ranks, the LR, the update and the EMA. Returns whether a stop was requested on any rank,
        and the last gradient norm."""
        t, info = self.cfg.train, self.info
        size = min(t.grad_accum, self.micro_per_epoch - self.batches_in_epoch)
        micro_batches = [self._micro_batch(next(batches)) for _ in range(size)]
        self.batches_in_epoch += size
        params = [p for p in self.model.parameters() if p.requires_grad]
        outputs: list[list[StepOutput]] = [[] for _ in range(size)]
        stop = False
        for phase in range(self.model.update_phases()):
            buffers = [b.detach().clone() for b in self.model.buffers()]  # BN statistics, WS-DAN centers
            ctx = StepContext(step=self.step, epoch=self.epoch, total_steps=self.total_steps,
                              total_epochs=self.total_epochs, criterion=self.criterion, phase=phase)
            for micro, (images, targets) in enumerate(micro_batches):
                no_sync = info.distributed and micro < size - 1  # DDP: gradients reduced once, with the last one
                try:
                    with self.step_module.no_sync() if no_sync else contextlib.nullcontext():
                        out = forward_backward(self.step_module, images, targets, ctx, info.device, self.amp,
                                               self.scaler, divide=size)
                except torch.OutOfMemoryError:
                    raise self._oom_error() from None
                outputs[micro].append(out)
            gnorm = clip_gradients(params, t.clip_grad, self.optimizer, self.scaler)
            finite = torch.isfinite(gnorm) & torch.isfinite(out.loss.detach())
            flags = torch.stack([(~finite).float(), torch.tensor(float(self.stop_requested), device=finite.device)])
            nonfinite, stop_now = (all_reduce_max(flags.to(info.device), info) > 0).tolist()
            stop = stop or bool(stop_now)
            if nonfinite and self.scaler is None:
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():  # the phase's forward passes changed nothing either
                    for b, saved in zip(self.model.buffers(), buffers):
                        b.copy_(saved)
                self._handle_nonfinite(out.loss, gnorm)  # raises, or counts the step and skips its other phases
                break
            set_lr(self.optimizer, lr_factor(self.step + 1, t, self.total_steps, self.steps_per_epoch))
            apply_update(self.optimizer, self.scaler)  # fp16: the scaler skips inf/nan steps itself
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
        else:
            merged = StepOutput.merge(outputs[-1])
            targets = micro_batches[-1][1]
            acc = (merged.logits.argmax(1) == targets).float().mean() * 100 if merged.logits is not None else None
            self.learning.add(merged.loss, acc)
        for (_, targets), outs in zip(micro_batches, outputs):
            window.add(StepOutput.merge(outs), targets)
        return stop, gnorm

    def _micro_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch on the device (bad samples counted, sample ids recorded where asked)."""
        t, info = self.cfg.train, self.info
        images, targets, idx, bad = batch
        self._count_bad(bad)
        if t.record_sample_ids and info.is_main:
            with open(self.run_dir / "sample_ids.txt", "a") as fh:
                fh.write(f"{self.step} {self.epoch} " + ",".join(map(str, idx.tolist())) + "\n")
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def _oom_error(self) -> TrainingError:
        info, c = self.info, self.cfg
        peak = torch.cuda.max_memory_allocated() / 2**30 if info.device.type == "cuda" else float("nan")
        return TrainingError(f"out of memory at data.batch_size={c.data.batch_size} per process (peak {peak:.1f} GiB "
                             f"on {info.device}); lower it, e.g. data.batch_size={max(1, c.data.batch_size // 2)} "
                             f"train.grad_accum={c.train.grad_accum * 2} keeps the global batch")

    def _count_bad(self, bad: torch.Tensor) -> None:
        if self.cfg.data.bad_data != "skip":
            return
        new = {int(b) for b in bad.tolist() if b >= 0}
        all_new = set().union(*gather_objects(new, self.info)) if self.info.distributed else new
        fresh = all_new - self.bad_samples
        if fresh and self.info.is_main:
            for i in sorted(fresh):
                say(f"warning: skipped unreadable image {self.train_set.records[i].path} (index {i})")
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
                say(f"warning: non-finite step {self.step + 1} skipped ({what}); "
                      f"{self.nonfinite_skipped} skipped so far")
            if self.nonfinite_skipped > t.nonfinite_budget:
                raise TrainingError(f"{self.nonfinite_skipped} non-finite steps exceed train.nonfinite_budget="
                                    f"{t.nonfinite_budget}; lower train.lr or set train.clip_grad")
            return
        path = self.save("nonfinite.pt")
        hint = type(self.model).lr_hint
        raise TrainingError(f"non-finite loss or gradient at step {self.step + 1} (epoch {self.epoch}); no weight "
                            f"was updated by it. The state before it is in {path}. Lower train.lr"
                            f"{f' ({hint})' if hint else ''}, set train.clip_grad, or set train.nonfinite=skip")

    def _log_window(self, window: Window, seconds: float, gnorm: torch.Tensor) -> dict[str, Any]:
        rec = {"kind": "train", "step": self.step, "epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"],
               "grad_norm": float(gnorm), "img_per_s": window.images * self.info.world_size / max(seconds, 1e-9)}
        rec.update(window.means(self.info))
        if self.info.device.type == "cuda":
            rec["mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.log.write(rec)
        return rec

    # ---------------------------------------------------------------------------------------------
    # Evaluation

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _evaluate(self, records, desc: str) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
        c = self.cfg
        logits, targets, excluded = predict_split(
            self._eval_model(), records, self.preprocess.transform(), batch_size=c.data.eval_batch_size,
            device=self.info.device, amp_dtype=self.amp, info=self.info, num_workers=c.data.num_workers,
            bad_data=c.data.bad_data, channels_last=c.train.channels_last, progress=self.progress, desc=desc)
        report = classification_report(logits, targets, self.index.class_names, c.eval.topk, c.eval.confused_pairs)
        report["excluded_unreadable"] = excluded
        return report, logits, targets

    def _end_of_epoch(self) -> None:
        c = self.cfg
        warning = self.learning.end_of_epoch(self.epoch, self.info, self.step)
        if warning and self.info.is_main:
            say(f"warning: {warning}")
            self.log.write({"kind": "warning", "step": self.step, "epoch": self.epoch, "message": warning})
        val = None
        if self.splits.val and c.train.eval_every and self.epoch % c.train.eval_every == 0:
            report, _, _ = self._evaluate(self.splits.val, "val")
            val = report["top1"]
            self.log.write({"kind": "val", "step": self.step, "epoch": self.epoch, "top1": report["top1"],
                            f"top{c.eval.topk}": report[f"top{c.eval.topk}"],
                            "mean_class_acc": report["mean_class_acc"]})
            if self.best_val is None or report["top1"] > self.best_val:
                self.best_val = report["top1"]
                self.save(ckpt.BEST)
        rec = self.last_log or {}
        self.log.write({"kind": "epoch", "epoch": self.epoch, "epochs": self.total_epochs, "step": self.step,
                        "loss": rec.get("loss"), "train_acc": rec.get("train_acc"), "val": val})
        if self.info.is_main and (val is not None or (self.progress and not on_terminal())):
            say(self._epoch_line(val))
        if not c.train.ckpt_every and self.step < self.total_steps:
            self.save()

    def _epoch_line(self, val: Optional[float]) -> str:
        """One plain line for the epoch that just ended (a log file's progress: no bars there)."""
        line = f"epoch {self.epoch}/{self.total_epochs} (step {self.step}/{self.total_steps})"
        rec = self.last_log or {}
        if "loss" in rec:
            line += f": loss {rec['loss']:.3f}"
            if "train_acc" in rec:
                line += f", train accuracy {rec['train_acc']:.1f}%"
            line += f", lr {rec['lr']:.2e}, {rec['img_per_s']:.0f} images/s"
        return line + (f"; val top-1 {val:.2f}%" if val is not None else "")

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
        if not self.splits.test or not c.eval.test:  # eval.test=false: a tuning trial never reads the test split
            return None
        report, logits, targets = self._evaluate(self.splits.test, "test")
        report["weights"] = chosen + (" with EMA" if self.ema is not None else "")
        report["rule"] = f"{c.model.method}.forward (the method's fixed inference rule)"
        report["skipped_unreadable_train"] = len(self.bad_samples)
        report["nonfinite_steps_skipped"] = self.nonfinite_skipped
        self.log.write({"kind": "test", "step": self.step, "top1": report["top1"],
                        f"top{c.eval.topk}": report[f"top{c.eval.topk}"], "mean_class_acc": report["mean_class_acc"]})
        if self.info.is_main:
            folder = write_final_report(self.run_dir, report, logits, targets, self.splits.test, self.index.class_names,
                                        self._eval_model(), self.preprocess, self.info.device, c)
            say(f"test: top-1 {report['top1']:.2f}%, top-{c.eval.topk} {report[f'top{c.eval.topk}']:.2f}%, "
                  f"mean per-class {report['mean_class_acc']:.2f}% on {report['num_images']} images "
                  f"({report['weights']})")
            if self.bad_samples:
                say(f"skipped {len(self.bad_samples)} unreadable training image(s) (data.bad_data=skip): "
                      + ", ".join(self.train_set.records[i].path for i in sorted(self.bad_samples)[:5]))
            if self.nonfinite_skipped:
                say(f"skipped {self.nonfinite_skipped} non-finite step(s) (train.nonfinite=skip)")
            say(f"report: {folder / 'index.html'}")
        return report


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(cfg: RunConfig, resume: Optional[str] = None, allow_mismatch: bool = False,
          progress: bool = True) -> TrainResult:
    """Trains the run a config describes (see the module docstring); the library entry point."""
    return Trainer(cfg, resume=resume, allow_mismatch=allow_mismatch, progress=progress).fit()


__all__ = ["train", "Trainer", "TrainResult", "Preempted", "EXIT_PREEMPTED", "lr_factor"]
