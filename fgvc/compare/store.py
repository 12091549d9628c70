"""What a comparison keeps in its folder so that it can stop anywhere and continue, on one machine or several.

- ``OUT/results/KEY.json``: one finished row (its test figures, its settings, its training figures), written
  atomically when its run ends; a row with one is never trained again with the same settings.
- ``OUT/claims/KEY.json``: which process trains a row now (its machine and pid), taken with an exclusive create,
  so two processes (or machines) sharing ``OUT`` never train the same row; a claim whose process has died on this
  machine is taken over, and the run continues from its checkpoint.
- ``OUT/logs/KEY.log``: each run's output.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import FgvcError
from ..report.metrics import read_metrics
from .plan import Row


def result_path(out: Path, row: Row) -> Path:
    return out / "results" / f"{row.key}.json"


def read_result(out: Path, row: Row) -> Optional[dict[str, Any]]:
    """The row's finished record, None when it has none (a torn file reads as none)."""
    try:
        return json.loads(result_path(out, row).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` as JSON atomically (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{HOST}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


HOST = socket.gethostname()


def alive(attrs: dict[str, Any]) -> bool:
    """Whether the process that holds a trial (or a claim) may still be running: on another machine it is
    assumed to be; on this one, its pid must exist."""
    if attrs.get("host") != HOST:
        return True
    try:
        os.kill(int(attrs.get("pid", 0)), 0)
        return True
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # a process of another user holds the pid
        return True


MACHINE_SETTINGS = ("data.num_workers=", "device=")  # what a machine sets for itself: not a difference of the run


def comparable(settings: list[str]) -> list[str]:
    """A run's settings without those each machine sets for itself (several machines share one comparison)."""
    return [s for s in settings if not s.startswith(MACHINE_SETTINGS)]


def check_finished(out: Path, row: Row, planned: list[str]) -> bool:
    """Whether the row finished with these settings.

    Raises:
        FgvcError: ``OUT`` holds the row finished with other settings (nothing of it is overwritten).
    """
    old = read_result(out, row)
    if not old or old.get("exit") != 0:
        return False
    if comparable(old["settings"]) != comparable(planned):
        changed = sorted(set(comparable(planned)) ^ set(comparable(old["settings"])))
        raise FgvcError(f"{out} holds '{row.describe()}' finished with other settings ({', '.join(changed)}); choose "
                        f"another --out, or delete {result_path(out, row)} and its run folder")
    return True


def claim(out: Path, row: Row) -> bool:
    """Takes the row for this process; False when another live process holds it."""
    path = out / "claims" / f"{row.key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": HOST, "pid": os.getpid(), "time": time.time()}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        return True
    except FileExistsError:
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == os.getpid() and holder.get("host") == HOST:
            return True
        if holder and alive(holder):
            return False
        write_json(path, mine)  # the holder died on this machine: continue its run
        return json.loads(path.read_text()).get("pid") == os.getpid()


def release(out: Path, row: Row) -> None:
    (out / "claims" / f"{row.key}.json").unlink(missing_ok=True)


def summarize(run_dir: Path) -> dict[str, Any]:
    """Training figures of a finished run from its metrics.jsonl: images/s (and seconds per image), first and last
    loss, the running training accuracy at the end, parameters (all and trained), warnings."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    out: dict[str, Any] = {}
    if train:
        timed = train[1:] or train  # the first window pays for the workers' start
        out["img_per_s"] = sum(r["img_per_s"] for r in timed) / len(timed)
        out["train_s_per_img"] = 1.0 / out["img_per_s"] if out["img_per_s"] > 0 else None
        out["first_loss"], out["last_loss"] = train[0]["loss"], train[-1]["loss"]
        if "train_acc" in train[-1]:
            out["train_acc"] = train[-1]["train_acc"]
    model = next((r for r in reversed(records) if r.get("kind") == "model"), None)
    if model:
        out["parameters"], out["trainable"] = model["parameters"], model["trainable"]
    out["warnings"] = [r["message"] for r in records if r.get("kind") == "warning"]
    return out


def last_validation(run_dir: Path) -> dict[int, float]:
    """The validation top-1 of each epoch a run logged (``{epoch: top1}``)."""
    return {int(r["epoch"]): float(r["top1"]) for r in read_metrics(run_dir) if r.get("kind") == "val"}


__all__ = ["HOST", "alive", "MACHINE_SETTINGS", "comparable", "result_path", "read_result", "write_json",
           "check_finished", "claim", "release", "summarize", "last_validation"]
