"""``fgvc compare``: which method is best on my data? Every chosen method trained on one dataset and one
backbone under the same budget, then one page that says what differs beyond noise.

    fgvc compare ~/photos/birds --backbone resnet50.tv_in1k --epochs 10          # class folders, every method
    fgvc compare /data/stanford_cars --dataset cars --methods baseline,wsdan,cal --weights resnet50.safetensors

Each method runs its fine-tuning recipe (``METHOD/finetune``: the settings for a short fine-tune from ImageNet
weights on any dataset), with the dataset, the backbone and the budget (epochs, resolution, batch, classes)
filled in the same for all. One job per file:

- :mod:`.plan`: the runs, the budget, each run's ``fgvc train`` arguments, checked before anything starts;
- :mod:`.launch`: training the runs (one process each, resumable, parallel where the device has room);
- :mod:`.analysis` and :mod:`.stats`: the numbers, paired over the same test images, with their uncertainty;
- :mod:`.results`, :mod:`.figures` and :mod:`.page`: ``OUT/results.json``, ``results.csv``, the pictures and
  ``OUT/index.html``.
"""

from __future__ import annotations

from typing import Any, Callable

from .analysis import analyze
from .figures import explain_images
from .launch import train_runs
from .page import build_page
from .plan import (
    BASELINE,
    Budget,
    Comparison,
    RunSpec,
    check_data,
    dataset_file,
    finetune_recipe,
    methods_for,
    plan_runs,
    train_arguments,
)
from .results import table, write_files


def run_comparison(c: Comparison, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains what is not finished, then writes the page, ``results.json`` and ``results.csv``; returns the
    summary (what ``results.json`` holds)."""
    results = train_runs(c, log)
    summary = analyze(c, results)
    write_files(summary, c.out)
    shown = explain_images(summary, c.out, "cpu" if c.device == "cpu" else "auto")
    build_page(summary, c.out, shown)
    log(f"wrote {c.out / 'index.html'}, {c.out / 'results.json'} and {c.out / 'results.csv'}")
    return summary


__all__ = ["BASELINE", "Comparison", "RunSpec", "Budget", "run_comparison", "methods_for", "plan_runs", "check_data",
           "train_arguments", "dataset_file", "finetune_recipe", "table", "analyze", "build_page"]
