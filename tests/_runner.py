"""Runs the fgvc CLI with an optional fault, for tests/test_reliability.py (a subprocess entry point).

FGVC_TEST_FAULT:
    slow_steps       every training step sleeps 50 ms (room to send a signal mid-run)
FGVC_TEST_PIDS: a folder; each process writes its pid there as rank-R.pid
    torn_checkpoint  the FGVC_TEST_N-th checkpoint file written stops halfway, touches FGVC_TEST_MARKER and
                     hangs (to be killed)
    nan              registers the method ``nan_at_step``: the baseline, whose loss is NaN at step
                     FGVC_TEST_NAN_STEP on rank FGVC_TEST_NAN_RANK
    oom              every training step raises torch.OutOfMemoryError
"""

import os
import sys
import time
from pathlib import Path

import torch

import fgvc.engine.checkpoint as checkpoint
from fgvc.methods.baseline import Baseline
from fgvc.methods import register_method

fault = os.environ.get("FGVC_TEST_FAULT", "")
if os.environ.get("FGVC_TEST_PIDS"):  # where a test finds each rank's process: DIR/rank-R.pid (R: RANK)
    Path(os.environ["FGVC_TEST_PIDS"], f"rank-{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))

if fault == "slow_steps":
    real_step = Baseline.training_step

    def slow_step(self, images, targets, ctx):
        time.sleep(0.05)
        return real_step(self, images, targets, ctx)

    Baseline.training_step = slow_step

if fault == "torn_checkpoint":
    stall_at, marker, calls = int(os.environ["FGVC_TEST_N"]), Path(os.environ["FGVC_TEST_MARKER"]), [0]

    class Torn:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            data = bytes(data)
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            marker.touch()
            time.sleep(600)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def torn_open(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        if "w" in mode and ".tmp-" in str(path):
            calls[0] += 1
            if calls[0] == stall_at:
                return Torn(fh)
        return fh

    checkpoint.open = torn_open

if fault == "nan":
    nan_step, nan_rank = int(os.environ["FGVC_TEST_NAN_STEP"]), int(os.environ["FGVC_TEST_NAN_RANK"])

    @register_method
    class NanAtStep(Baseline):
        name = "nan_at_step"

        def training_step(self, images, targets, ctx):
            out = super().training_step(images, targets, ctx)
            if ctx.step == nan_step and int(os.environ.get("RANK", "0")) == nan_rank:
                out.loss = out.loss * float("nan")
            return out

if fault == "oom":
    def oom_step(self, images, targets, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (faked)")

    Baseline.training_step = oom_step

from fgvc.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
