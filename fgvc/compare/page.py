"""``OUT/index.html``: the comparison as one page that opens from its folder (no server, nothing to install).

Built section by section from the summary of :func:`~fgvc.compare.analysis.analyze`: the overview
(:mod:`.overview`: protocol, grid, costs, tuning), then per backbone its results table, every pair, the curves,
the per-class differences, what each row fixes and breaks, and the same test images explained by each row; last,
how each run was trained.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from ..report.page import html_page
from ..report.tables import cell
from .figures import figure_name, plot_costs, plot_per_class_differences, plot_runs_curves
from .overview import costs, grid, headline, tuning
from .results import interval, status

STYLE = ("table{margin:.5em 0}td,th{vertical-align:top}.good{background:#e3f6e3}.bad{background:#fbe3e3}"
         ".noise{color:#666}.na{color:#888;font-size:.85em;max-width:18em}img.overlay{max-width:100%}"
         "code{font-size:.85em}.explained td{min-width:0}")
ROW_CLASS = {"better": "good", "worse": "bad"}


def results_table(rows: list[dict[str, Any]], backbone: str) -> list[str]:
    """A line per row of one backbone: accuracies, the difference to plain fine-tuning, costs and its report."""
    parts = [f"<table class='results' id='results-{escape(backbone)}'><tr><th>run</th><th>mode</th><th>test top-1</th>"
             "<th>mean per class</th><th>vs plain fine-tuning (points, 95% interval)</th><th>p</th><th>verdict</th>"
             "<th>train s/image</th><th>infer images/s</th><th>parameters served (trained)</th><th>minutes</th>"
             "<th>report</th></tr>"]
    for row in rows:
        difference = row.get("vs_baseline") or {}
        link = f"<a href='runs/{row['key']}/report/index.html'>report</a>" if row.get("top1") is not None else ""
        params = (f"{row['parameters'] / 1e6:.1f}M ({row['trainable'] / 1e6:.2f}M)" if row.get("parameters") else "-")
        parts.append(f"<tr class='{ROW_CLASS.get(difference.get('verdict'), '')}'><td>{escape(row['name'])}</td>"
                     f"<td>{escape(row['mode'])}</td><td>{cell(row.get('top1'))}</td>"
                     f"<td>{cell(row.get('mean_class_acc'))}</td>"
                     f"<td>{interval(difference) if difference else ''}</td>"
                     f"<td>{cell(difference.get('p_value'), '{:.2g}')}</td><td>{escape(status(row))}</td>"
                     f"<td>{cell(row.get('train_s_per_img'), '{:.4f}')}</td>"
                     f"<td>{cell(row.get('infer_img_per_s'), '{:.1f}')}</td><td>{params}</td>"
                     f"<td>{cell(row.get('minutes'), '{:.1f}')}</td>"
                     f"<td>{link}</td></tr>")
    return parts + ["</table>"]


def pairs_table(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], backbone: str) -> list[str]:
    """Every pair of a backbone's tested rows (row minus column), where there are more than two."""
    names = [r["name"] for r in rows if r.get("per_class")]
    if len(names) <= 2:
        return []
    by_pair = {(p["first"], p["second"]): p for p in pairs}
    parts = [f"<h3>Every pair</h3><p>Row minus column, in points, with the 95% paired interval; green or red: "
             f"beyond noise, grey: within noise.</p><table class='pairs' id='pairs-{escape(backbone)}'><tr><th></th>"
             + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"]
    for row_name in names:
        cells = []
        for column_name in names:
            pair = by_pair.get((row_name, column_name)) or by_pair.get((column_name, row_name))
            if row_name == column_name or pair is None:
                cells.append("<td></td>")
                continue
            sign = 1 if pair["first"] == row_name else -1
            low, high = sorted((sign * pair["ci_low"], sign * pair["ci_high"]))
            difference = sign * pair["diff"]
            kind = "noise" if pair["verdict"] == "within noise" else ("good" if difference > 0 else "bad")
            cells.append(f"<td class='{kind}'>{difference:+.1f} [{low:+.1f}, {high:+.1f}]</td>")
        parts.append(f"<tr><th>{escape(row_name)}</th>{''.join(cells)}</tr>")
    return parts + ["</table>"]


def fixes_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per row: the images it fixes and breaks against plain fine-tuning, and the classes most affected."""
    rows = [r for r in rows if "fixes" in r]
    if not rows:
        return []
    parts = ["<h3>What each row fixes and breaks</h3><p>Test images plain fine-tuning gets wrong and the row right "
             "(fixes), and the reverse (breaks), by class.</p><table class='fixes'><tr><th>run</th><th>fixes</th>"
             "<th>breaks</th><th>classes fixed most</th><th>classes broken most</th></tr>"]
    for row in rows:
        fixed = ", ".join(f"{escape(x['class'])} ({x['images']})" for x in row["fixes"])
        broken = ", ".join(f"{escape(x['class'])} ({x['images']})" for x in row["breaks"])
        parts.append(f"<tr><td>{escape(row['name'])}</td><td>{row['vs_baseline']['only_first']}</td>"
                     f"<td>{row['vs_baseline']['only_second']}</td><td>{fixed}</td><td>{broken}</td></tr>")
    return parts + ["</table>"]


def explained(shown: dict[str, list[str]], backbone: str) -> list[str]:
    """The same test images, one image at a time, every row's figure at its full width beneath it."""
    if not shown:
        return []
    parts = [f"<h3>The same test images, explained by every row</h3><p>The images where the rows disagree most; "
             f"each figure gives the truth, the prediction and what the method looked at.</p>"
             f"<div class='explained' id='explain-{escape(backbone)}'>"]
    for j in range(len(next(iter(shown.values())))):
        parts.append(f"<h4>Test image {j + 1}</h4>" + "".join(
            f"<p><b>{escape(name)}</b><br><a href='{files[j]}'><img class='overlay' src='{files[j]}' "
            f"alt='{escape(name)}'></a></p>" for name, files in shown.items()))
    return parts + ["</div>"]


def backbone_section(summary: dict[str, Any], backbone: str, out: Path, shown: dict[str, list[str]]) -> list[str]:
    rows = [r for r in summary["rows"] if r["backbone"] == backbone]
    info = summary["per_backbone"][backbone]
    parts = [f"<h2>{escape(backbone)}</h2>"] + results_table(rows, backbone)
    parts += pairs_table(rows, info["pairs"], backbone)
    curves = figure_name(backbone, "curves")
    if plot_runs_curves(rows, info["reference"], out / curves, f"{summary.get('title') or 'training'}: {backbone}"):
        parts.append(f"<h3>Training curves</h3><img class='plot' src='{curves}' alt='training curves'>")
    per_class = figure_name(backbone, "per_class")
    if plot_per_class_differences(rows, info["reference"], out / per_class):
        parts.append(f"<h3>Per-class accuracy against plain fine-tuning</h3><img class='plot' src='{per_class}' "
                     "alt='per-class differences'>")
    return parts + fixes_table(rows) + explained(shown, backbone)


def build_page(summary: dict[str, Any], out: Path, shown: dict[str, dict[str, list[str]]]) -> Path:
    """Writes ``OUT/index.html`` (and its figures); ``shown``: per backbone, per row, its explained images."""
    parts = headline(summary) + grid(summary) + costs(summary, plot_costs(summary, out / "costs.png"))
    parts += tuning(summary)
    for backbone in summary["backbones"]:
        parts += backbone_section(summary, backbone, out, shown.get(backbone, {}))
    parts.append("<h2>How each run was trained</h2><ul>" + "".join(
        f"<li><b>{escape(r['name'])}</b> on {escape(r['backbone'])}: <code>{escape(r['command'])}</code></li>"
        for r in summary["rows"] if r.get("command")) + "</ul>")
    parts.append("<p>Numbers: <a href='results.json'>results.json</a>, <a href='results.csv'>results.csv</a>.</p>")
    path = out / "index.html"
    tmp = out / f".index.html.{id(summary)}"
    tmp.write_text(html_page(f"fgvc compare: {summary.get('title') or summary['dataset']}", parts, STYLE))
    tmp.replace(path)
    return path


__all__ = ["build_page"]
