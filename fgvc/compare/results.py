"""A comparison's numbers as files (``results.json``: everything; ``results.csv``: a row per run) and as the
Markdown table the command prints."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..report.tables import cell, markdown_table

CSV_FIELDS = ["name", "method", "top1", "mean_class_acc", "diff_vs_baseline", "ci_low", "ci_high", "p_value",
              "verdict", "only_this_right", "only_baseline_right", "img_per_s", "minutes", "error"]


def verdict(row: dict[str, Any], baseline: str | None) -> str:
    """``reference`` for the baseline, else the verdict against it (empty without one)."""
    if row["name"] == baseline:
        return "reference"
    return (row.get("vs_baseline") or {}).get("verdict", "")


def interval(difference: dict[str, Any], digits: int = 2) -> str:
    """``+1.23 [-0.40, +2.80]``: a paired difference in points with its 95% interval."""
    return (f"{difference['diff']:+.{digits}f} [{difference['ci_low']:+.{digits}f}, "
            f"{difference['ci_high']:+.{digits}f}]")


def write_files(summary: dict[str, Any], out: Path) -> None:
    """``results.json`` (everything but the per-image lists) and ``results.csv`` (a row per run)."""
    slim = {key: value for key, value in summary.items() if key not in ("test_paths", "test_targets")}
    (out / "results.json").write_text(json.dumps(slim, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in summary["runs"]:
            difference = row.get("vs_baseline") or {}
            writer.writerow({"name": row["name"], "method": row["method"], "top1": row.get("top1"),
                             "mean_class_acc": row.get("mean_class_acc"), "diff_vs_baseline": difference.get("diff"),
                             "ci_low": difference.get("ci_low"), "ci_high": difference.get("ci_high"),
                             "p_value": difference.get("p_value"), "verdict": verdict(row, summary["baseline"]),
                             "only_this_right": difference.get("only_first"),
                             "only_baseline_right": difference.get("only_second"), "img_per_s": row.get("img_per_s"),
                             "minutes": row.get("minutes"), "error": row.get("error")})


def table(summary: dict[str, Any]) -> str:
    """The results as a Markdown table (what the command prints)."""
    rows = []
    for row in summary["runs"]:
        difference = row.get("vs_baseline")
        rows.append([row["name"], f"{cell(row.get('top1'))}%", f"{cell(row.get('mean_class_acc'))}%",
                     interval(difference) if difference else "-",
                     cell((difference or {}).get("p_value"), "{:.2g}"),
                     verdict(row, summary["baseline"]) or row.get("error") or "-",
                     cell(row.get("img_per_s"), "{:.1f}"), cell(row.get("minutes"), "{:.1f}")])
    return markdown_table(["run", "test top-1", "mean per class", "vs baseline [95% interval]", "p", "verdict",
                           "train images/s", "minutes"], rows)


__all__ = ["write_files", "table", "verdict", "interval"]
