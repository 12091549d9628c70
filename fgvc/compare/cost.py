"""What each row costs beside what it scores: training seconds per image (from its run's log), inference images/s
at batch 64 on this device (measured once per run, kept in ``RUN/cost.json``), and the parameters it trained (its
parameters as served are listed beside); and the Pareto front of accuracy against each cost: the rows no other
row beats on both."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

INFER_BATCH = 64
# cost axis -> (the row's field, lower is better, how the page names it)
AXES = {"train": ("train_s_per_img", True, "training seconds per image"),
        "infer": ("infer_img_per_s", False, "inference images/s at batch 64"),
        # what a fine-tuning mode saves: the parameters trained (and kept per task); all of them for full fine-tuning
        "params": ("trainable", True, "parameters trained")}


def inference_speed(run_dir: str, device: str = "auto", batch: int = INFER_BATCH, repeats: int = 3) -> float:
    """Images/s of the run's inference rule on ``batch`` random images at its input size (a LoRA run merged, as it
    is served), after one untimed pass; kept in ``RUN/cost.json`` for this device."""
    from ..run import load_run

    path = Path(run_dir) / "cost.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    run = load_run(run_dir, device=device)
    key = f"{run.device.type}:{torch.cuda.get_device_name(run.device) if run.device.type == 'cuda' else 'cpu'}:{batch}"
    if key in known:
        return known[key]
    size = run.preprocess.img_size
    x = torch.randn(batch, 3, size, size, device=run.device)
    with torch.no_grad():
        run.model(x)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        start = time.perf_counter()
        for _ in range(repeats):
            run.model(x)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
    speed = batch * repeats / (time.perf_counter() - start)
    known[key] = speed
    path.write_text(json.dumps(known))
    return speed


def pareto(points: list[tuple[str, float, float]], lower_is_better: bool) -> list[str]:
    """The names on the front of ``(name, accuracy, cost)``: no other point has at least its accuracy at no more
    cost (no less, where more is better) and is strictly better in one."""
    front = []
    for name, accuracy, cost in points:
        def better(other: tuple[str, float, float]) -> bool:
            _, acc, c = other
            cheaper = c <= cost if lower_is_better else c >= cost
            strictly = acc > accuracy or (c < cost if lower_is_better else c > cost)
            return acc >= accuracy and cheaper and strictly
        if not any(better(p) for p in points if p[0] != name):
            front.append(name)
    return front


def add_costs(summary: dict[str, Any], device: str = "auto") -> None:
    """Fills each tested row's inference speed and the summary's Pareto fronts (``summary["pareto"][axis]``: the
    keys of the rows on it)."""
    tested = [r for r in summary["rows"] if r.get("top1") is not None]
    for record in tested:
        record["infer_img_per_s"] = inference_speed(record["run_dir"], device)
    summary["pareto"] = {}
    for axis, (field, lower, _) in AXES.items():
        points = [(r["key"], r["top1"], r[field]) for r in tested if r.get(field) is not None]
        summary["pareto"][axis] = pareto(points, lower)
    for record in tested:
        record["pareto"] = [axis for axis, keys in summary["pareto"].items() if record["key"] in keys]


def cost_of(record: dict[str, Any], axis: str) -> Optional[float]:
    return record.get(AXES[axis][0])


__all__ = ["INFER_BATCH", "AXES", "inference_speed", "pareto", "add_costs", "cost_of"]
