"""Training a comparison's runs: one ``fgvc train`` process per run, several at once where the device has room.

A run's result is appended to ``OUT/results.jsonl`` as it ends, so a rerun of the same command trains nothing that
finished and continues an interrupted run from its ``last.pt`` (``--resume auto``). A run's minutes add up over
its attempts (``runs/NAME.attempts``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from ..errors import FgvcError
from ..report.metrics import read_metrics
from .plan import Comparison, RunSpec, slug, train_arguments

RESULTS = "results.jsonl"


def auto_parallel(device: str, runs: int) -> int:
    """Runs at once: one on a CPU (its cores are shared by every run); on a GPU, one per 20 GiB, at most 8."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return 1
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return max(1, min(8, runs, int(gib // 20)))


def read_results(out: Path) -> dict[str, dict[str, Any]]:
    """The finished runs recorded in ``OUT/results.jsonl`` (the last record of each name)."""
    done: dict[str, dict[str, Any]] = {}
    path = out / RESULTS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a torn last line
                continue
            done[record["name"]] = record
    return done


def summarize(run_dir: Path) -> dict[str, Any]:
    """Training figures of a finished run from its metrics.jsonl: images/s, first and last loss, the running
    training accuracy at the end, warnings."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    out: dict[str, Any] = {}
    if train:
        timed = train[1:] or train  # the first window pays for the workers' start
        out["img_per_s"] = sum(r["img_per_s"] for r in timed) / len(timed)
        out["first_loss"], out["last_loss"] = train[0]["loss"], train[-1]["loss"]
        if "train_acc" in train[-1]:
            out["train_acc"] = train[-1]["train_acc"]
    out["warnings"] = [r["message"] for r in records if r.get("kind") == "warning"]
    return out


@dataclass
class Running:
    """A run's training process while it runs."""

    spec: RunSpec
    arguments: list[str]
    process: subprocess.Popen
    started: float
    log: IO[str]


def pending_runs(c: Comparison, done: dict[str, dict[str, Any]], workers: int) -> list[tuple[RunSpec, list[str]]]:
    """The runs still to train, with their arguments; a finished run with other settings is refused.

    Raises:
        FgvcError: ``OUT`` holds a finished run of the same name with other settings.
    """
    todo = []
    for run in c.runs:
        arguments = train_arguments(c, run, workers)
        old = done.get(run.name)
        if old and old.get("exit") == 0:
            if old["settings"] != arguments:
                changed = sorted(set(arguments) ^ set(old["settings"]))
                raise FgvcError(f"{c.out} holds a finished run '{run.name}' with other settings ({', '.join(changed)}); "
                                "choose another --out, or delete its runs/ folder and its results.jsonl line")
            continue
        todo.append((run, arguments))
    return todo


def start(c: Comparison, run: RunSpec, arguments: list[str], threads: int) -> Running:
    """Starts one run's ``fgvc train`` (resuming its folder where it holds a checkpoint); its stderr goes to
    ``OUT/NAME.log``."""
    run_dir = c.out / "runs" / slug(run.name)
    cmd = [sys.executable, "-m", "fgvc", "train", *arguments, f"out={run_dir}", "--quiet", "--json", "--resume", "auto"]
    log = open(c.out / f"{slug(run.name)}.log", "a")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    return Running(run, arguments, process, time.time(), log)


def finish(c: Comparison, running: Running) -> dict[str, Any]:
    """The record of a run whose process ended, appended to ``OUT/results.jsonl``."""
    running.log.close()
    stdout = running.process.stdout.read()
    name, code = running.spec.name, running.process.returncode
    run_dir = c.out / "runs" / slug(name)
    attempts = run_dir.parent / f"{slug(name)}.attempts"
    with open(attempts, "a") as fh:  # minutes over every attempt
        fh.write(f"{time.time() - running.started:.1f}\n")
    seconds = sum(float(x) for x in attempts.read_text().split())
    result: dict[str, Any] = {"name": name, "method": running.spec.method, "exit": code, "minutes": seconds / 60,
                              "settings": running.arguments, "run_dir": str(run_dir)}
    json_lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if code == 0 and json_lines:
        test = json.loads(json_lines[-1])
        result.update(top1=test["top1"], mean_class_acc=test["mean_class_acc"])
    else:
        tail = (c.out / f"{slug(name)}.log").read_text().strip().splitlines()
        result["error"] = tail[-1] if tail else f"exit {code}"
        result["exit"] = code or 1
    result.update(summarize(run_dir))
    with open(c.out / RESULTS, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


def train_runs(c: Comparison, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Trains every run not yet finished with these settings; returns every run's record."""
    c.out.mkdir(parents=True, exist_ok=True)
    done = read_results(c.out)
    parallel = c.parallel or auto_parallel(c.device, len(c.runs))
    cores = os.cpu_count() or 2
    todo = pending_runs(c, done, workers=max(1, min(8, cores // parallel)))
    if not todo:
        log(f"every run is finished ({len(c.runs)}); nothing to train")
    running: list[Running] = []
    started = len(c.runs) - len(todo)
    while todo or running:
        while todo and len(running) < parallel:
            run, arguments = todo.pop(0)
            started += 1
            running.append(start(c, run, arguments, threads=max(1, cores // parallel)))
            log(f"started {run.name} ({started} of {len(c.runs)}): fgvc train {' '.join(arguments)}")
        time.sleep(1)
        for item in [r for r in running if r.process.poll() is not None]:
            running.remove(item)
            result = done[item.spec.name] = finish(c, item)
            verdict = f"top-1 {result['top1']:.2f}%" if "top1" in result else f"failed: {result['error']}"
            log(f"finished {item.spec.name}: {verdict} in {result['minutes']:.1f} min")
    return {r.name: done[r.name] for r in c.runs if r.name in done}


__all__ = ["RESULTS", "auto_parallel", "read_results", "summarize", "pending_runs", "train_runs"]
