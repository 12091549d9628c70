"""A comparison's numbers as files (``results.json``: everything; ``results.csv``: a row per backbone and row) and as
the Markdown table the command prints."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

from ..report.tables import cell, markdown_table

CSV_FIELDS = ["backbone", "name", "method", "mode", "top1", "mean_class_acc", "diff_vs_baseline", "ci_low", "ci_high",
              "p_value", "verdict", "only_this_right", "only_baseline_right", "train_s_per_img", "infer_img_per_s",
              "parameters", "trainable", "pareto", "trials", "chosen", "minutes", "tuning_minutes", "refused", "error"]


def verdict(row: dict[str, Any]) -> str:
    """``reference`` for a backbone's plain fine-tuning, else the verdict against it ('' without one)."""
    if row.get("reference") and row.get("top1") is not None:
        return "reference"
    return (row.get("vs_baseline") or {}).get("verdict", "")


def interval(difference: dict[str, Any], digits: int = 2) -> str:
    """``+1.23 [-0.40, +2.80]``: a paired difference in points with its 95% interval."""
    return (f"{difference['diff']:+.{digits}f} [{difference['ci_low']:+.{digits}f}, "
            f"{difference['ci_high']:+.{digits}f}]")


def chosen_text(row: dict[str, Any]) -> str:
    chosen = row.get("chosen")
    if chosen is None:
        return ""
    return "; ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(chosen.items()))


def status(row: dict[str, Any], why: bool = True) -> str:
    """What a table says of a row: its verdict, that it does not apply (and why), or why it failed."""
    if row.get("refused"):
        return f"does not apply: {row['refused']}" if why else "does not apply"
    if row.get("error"):
        return f"failed: {row['error']}"
    return verdict(row) or ("-" if row.get("top1") is None else "")


def write_files(summary: dict[str, Any], out: Path) -> None:
    """``results.json`` (everything but the per-image lists) and ``results.csv`` (a line per row)."""
    slim = {key: value for key, value in summary.items() if key not in ("test_paths", "test_targets")}
    (out / "results.json").write_text(json.dumps(slim, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in summary["rows"]:
            difference = row.get("vs_baseline") or {}
            writer.writerow({
                "backbone": row["backbone"], "name": row["name"], "method": row["method"], "mode": row["mode"],
                "top1": row.get("top1"), "mean_class_acc": row.get("mean_class_acc"),
                "diff_vs_baseline": difference.get("diff"), "ci_low": difference.get("ci_low"),
                "ci_high": difference.get("ci_high"), "p_value": difference.get("p_value"), "verdict": verdict(row),
                "only_this_right": difference.get("only_first"), "only_baseline_right": difference.get("only_second"),
                "train_s_per_img": row.get("train_s_per_img"), "infer_img_per_s": row.get("infer_img_per_s"),
                "parameters": row.get("parameters"), "trainable": row.get("trainable"),
                "pareto": " ".join(row.get("pareto", [])), "trials": len(row.get("trials", [])) or None,
                "chosen": chosen_text(row), "minutes": row.get("minutes"), "tuning_minutes": row.get("tuning_minutes"),
                "refused": row.get("refused"), "error": row.get("error")})


def table(summary: dict[str, Any]) -> str:
    """The results as a Markdown table (what the command prints): a line per backbone and row."""
    several = len(summary["backbones"]) > 1
    lines = []
    for row in summary["rows"]:
        difference = row.get("vs_baseline")
        lines.append(([row["backbone"]] if several else []) + [
            row["name"], f"{cell(row.get('top1'))}%" if row.get("top1") is not None else "-",
            f"{cell(row.get('mean_class_acc'))}%" if row.get("mean_class_acc") is not None else "-",
            interval(difference) if difference else "-", cell((difference or {}).get("p_value"), "{:.2g}"),
            status(row, why=False), cell(row.get("img_per_s"), "{:.1f}"), cell(row.get("minutes"), "{:.1f}")])
    return markdown_table((["backbone"] if several else []) + ["run", "test top-1", "mean per class",
                          "vs baseline [95% interval]", "p", "verdict", "train images/s", "minutes"], lines)


def reference_of(summary: dict[str, Any], backbone: str) -> Optional[str]:
    return summary["per_backbone"][backbone]["reference"]


__all__ = ["write_files", "table", "verdict", "interval", "status", "chosen_text", "reference_of"]
