"""``fgvc compare``: which method, on which backbone, with which kind of fine-tuning, at what cost, is best on my
data? Every row (a method, a backbone, a fine-tuning mode) trained under the same budget, tuned the same way when
asked, then one page that says what differs beyond noise and what it costs.

    fgvc compare ~/photos/birds --backbone resnet50.tv_in1k --epochs 10          # class folders, every method
    fgvc compare DATA --backbones efficientnet_lite0,vit_small_patch14_reg4_dinov2 --methods baseline,cal,transfg \\
        --finetune full,lora,linear --tune 8 --epochs 10

Each method runs its fine-tuning recipe (``METHOD/finetune``), with the data, the backbone and the budget filled in
the same for all. One job per file:

- :mod:`.plan`: the rows, the budget, each row's ``fgvc train`` arguments; :mod:`.preflight`: the checks before
  any run; :mod:`.space`: the tuning spaces;
- :mod:`.launch`: training (one process per run, resumable, parallel where the device has room, shared between
  machines), with :mod:`.tune` (the Optuna studies) and :mod:`.store` (results and claims in ``OUT``);
- :mod:`.analysis`, :mod:`.stats` and :mod:`.cost`: the numbers, paired over the same test images, with their
  uncertainty, and the costs with their Pareto fronts;
- :mod:`.results`, :mod:`.figures`, :mod:`.overview` and :mod:`.page`: ``OUT/results.json``, ``results.csv``,
  the pictures and ``OUT/index.html``.
"""

from __future__ import annotations

from typing import Any, Callable

from .analysis import analyze
from .cost import add_costs
from .figures import explain_images
from .launch import train_rows
from .page import build_page
from .plan import (BASELINE, MODES, Budget, Comparison, Row, RunSpec, methods_for, parse_weights, plan_runs, rows,
                   train_arguments)
from .recipes import dataset_file, finetune_recipe
from .preflight import check_comparison
from .results import table, write_files
from .store import read_result
from .tune import add_tuning


def run_comparison(c: Comparison, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Checks everything, trains what is not finished (its trials first when tuning), then writes the page,
    ``results.json`` and ``results.csv``; returns the summary (what ``results.json`` holds)."""
    plan = rows(c)
    spaces = check_comparison(c, plan, log)
    train_rows(c, plan, lambda row: spaces[row.key], log)
    results = {row.key: read_result(c.out, row) for row in plan if not row.refused}
    summary = analyze(c, plan, {k: v for k, v in results.items() if v is not None})
    add_tuning(summary, c, plan, spaces)
    device = "cpu" if c.device == "cpu" else "auto"
    add_costs(summary, device)
    write_files(summary, c.out)
    shown = {b: explain_images(summary, c.out, b, device) for b in c.backbones}
    build_page(summary, c.out, shown)
    log(f"wrote {c.out / 'index.html'}, {c.out / 'results.json'} and {c.out / 'results.csv'}")
    return summary


__all__ = ["BASELINE", "MODES", "Comparison", "RunSpec", "Row", "Budget", "run_comparison", "methods_for",
           "plan_runs", "parse_weights", "rows", "train_arguments", "dataset_file", "finetune_recipe", "table",
           "analyze", "build_page"]
