"""Checkpoints that are complete or absent, verified when read.

A checkpoint file is the ``torch.save`` payload followed by a footer: the payload's length, its SHA-256
and an end marker. It is written to a temporary file in the same folder, flushed, fsynced and renamed
over the target (``os.replace`` is atomic on POSIX), so a process killed mid-write leaves the previous
checkpoint intact. A reader refuses a file without the marker or with a wrong hash, and
:func:`find_resumable` falls back to the previous valid checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CheckpointError

MAGIC = b"FGVC-CKPT-END-v1"
_FOOTER = struct.Struct("<Q32s16s")  # payload length, sha256, magic
LAST = "last.pt"
BEST = "best.pt"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Writes ``state`` atomically: temporary file, fsync, rename, fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    digest = hashlib.sha256(payload).digest()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.write(_FOOTER.pack(len(payload), digest, MAGIC))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Reads and verifies a checkpoint.

    Raises:
        CheckpointError: Missing file, no end marker (incomplete write), or a hash mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if len(data) < _FOOTER.size:
        raise CheckpointError(f"{path}: incomplete checkpoint (no end marker)")
    length, digest, magic = _FOOTER.unpack(data[-_FOOTER.size:])
    if magic != MAGIC or length != len(data) - _FOOTER.size:
        raise CheckpointError(f"{path}: incomplete or foreign checkpoint (no fgvc end marker)")
    payload = memoryview(data)[:length]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path}: checkpoint is corrupt (hash mismatch)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the run's ``step-N.pt`` files, newest first."""
    out = []
    for p in Path(run_dir).glob("step-*.pt"):
        m = _STEP_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def find_resumable(run_dir: str | Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """The newest valid checkpoint of a run folder and its content, or None.

    ``last.pt`` is the newest by construction; when it is unreadable the ``step-N.pt`` files are tried
    from the newest down. A checkpoint that fails verification is skipped with a warning.
    """
    run_dir = Path(run_dir)
    candidates = [(-1, run_dir / LAST)] if (run_dir / LAST).exists() else []
    candidates += step_checkpoints(run_dir)
    for _, path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            print(f"warning: {e}; trying an older checkpoint")
    return None


def prune_step_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Deletes all but the ``keep`` newest ``step-N.pt`` files (and stale temporary files)."""
    for _, p in step_checkpoints(Path(run_dir))[max(keep, 0):]:
        p.unlink(missing_ok=True)
    for p in Path(run_dir).glob(".*.pt.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # still being written by a live process
        except (ValueError, ProcessLookupError):
            p.unlink(missing_ok=True)
        except PermissionError:
            pass


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its ``last.pt``, or ``best.pt`` if that is all it has) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        for name in (LAST, BEST):
            if (path / name).is_file():
                return path / name
        steps = step_checkpoints(path)
        if steps:
            return steps[0][1]
        raise CheckpointError(f"{path}: no checkpoint in this run folder (no last.pt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint or run folder not found: {path}")
    return path
