"""``OUT/index.html``: the comparison as one page that opens from its folder (no server, nothing to install).

The page is built section by section from the summary :func:`~fgvc.compare.analysis.analyze` returns: the
headline, the results table, every pair, the curves, the per-class differences, what each method fixes and
breaks, the same images explained by each method, and how each run was trained.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from ..report.page import html_page
from ..report.tables import cell
from .figures import plot_runs_curves, plot_per_class_differences
from .plan import slug
from .results import interval, verdict
from .stats import describe

STYLE = ("table{margin:.5em 0}td,th{vertical-align:top}.good{background:#e3f6e3}.bad{background:#fbe3e3}"
         ".noise{color:#666}img.overlay{max-width:320px}code{font-size:.85em}")
ROW_CLASS = {"better": "good", "worse": "bad"}


def setting_words(summary: dict[str, Any]) -> str:
    """``resnet50, 10 epochs at 448 px, the first 20 classes``: what every run shared."""
    budget = summary["budget"]
    epochs = budget.get("epochs")
    words = (f"{summary['backbone']}, "
             + (f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "the recipes’ epochs")
             + f" at {budget.get('img_size', 'the recipes’')} px")
    return words + (f", the first {budget['classes']} classes" if budget.get("classes") else "")


def headline(summary: dict[str, Any]) -> list[str]:
    """The title, the data and setting, the best run and which differences are within noise."""
    baseline, runs = summary["baseline"], summary["runs"]
    parts = [f"<h1>{escape(summary.get('title') or 'fgvc compare')}</h1>",
             f"<p class='big'>{escape(summary['dataset'])}: {summary['classes']} classes, {summary['test_images']} "
             f"test images; {escape(setting_words(summary))}. {escape(summary['machine'])}, {summary['date']}.</p>"]
    tested = [r for r in runs if r.get("top1") is not None]
    if tested:
        best = max(tested, key=lambda r: r["top1"])
        difference = best.get("vs_baseline")
        against = f"; against the baseline {escape(describe(difference, best['name'], baseline))}." if difference else "."
        parts.append(f"<p class='big'>Highest test top-1: <b>{escape(best['name'])}</b> at {best['top1']:.2f}%"
                     f"{against}</p>")
    if baseline:
        within = [r["name"] for r in runs if verdict(r, baseline) == "within noise"]
        beyond = [(r["name"], verdict(r, baseline)) for r in runs if verdict(r, baseline) in ("better", "worse")]
        words = []
        if within:
            words.append(f"Within noise of the baseline (exact McNemar p ≥ 0.05): {', '.join(map(escape, within))}.")
        if beyond:
            words.append("Beyond noise: " + ", ".join(f"{escape(n)} {v}" for n, v in beyond) + ".")
        parts.append(f"<p id='noise'>{' '.join(words)} Each difference is paired over the same test images: a 95% "
                     "bootstrap interval and the exact McNemar test (docs/benchmarks.md says why).</p>")
    return parts


def status(row: dict[str, Any], baseline: str | None) -> str:
    """What the results table says of a run: its verdict, or why it failed."""
    if row.get("error"):
        return f"failed: {row['error'].removeprefix('error: ')}"
    return verdict(row, baseline)


def results_table(summary: dict[str, Any]) -> list[str]:
    """A row per run: accuracies, the difference to the baseline, speed, minutes and a link to its report."""
    parts = ["<h2>Results</h2><table id='results'><tr><th>run</th><th>method</th><th>test top-1</th>"
             "<th>mean per class</th><th>vs baseline (points, 95% interval)</th><th>p</th><th>verdict</th>"
             "<th>train images/s</th><th>minutes</th><th>report</th></tr>"]
    for row in summary["runs"]:
        difference = row.get("vs_baseline") or {}
        report = f"runs/{slug(row['name'])}/report/index.html"
        parts.append(f"<tr class='{ROW_CLASS.get(difference.get('verdict'), '')}'><td>{escape(row['name'])}</td>"
                     f"<td>{escape(row['method'])}</td><td>{cell(row.get('top1'))}%</td>"
                     f"<td>{cell(row.get('mean_class_acc'))}%</td>"
                     f"<td>{interval(difference) if difference else ''}</td>"
                     f"<td>{cell(difference.get('p_value'), '{:.2g}')}</td>"
                     f"<td>{escape(status(row, summary['baseline']))}</td>"
                     f"<td>{cell(row.get('img_per_s'), '{:.1f}')}</td><td>{cell(row.get('minutes'), '{:.1f}')}</td>"
                     f"<td><a href='{report}'>report</a></td></tr>")
    return parts + ["</table>"]


def pairs_table(summary: dict[str, Any]) -> list[str]:
    """Every pair of tested runs (row minus column), where there are more than two."""
    names = [r["name"] for r in summary["runs"] if r.get("per_class")]
    if len(names) <= 2:
        return []
    by_pair = {(p["first"], p["second"]): p for p in summary["pairs"]}
    parts = ["<h2>Every pair</h2><p>Row minus column, in points, with the 95% paired interval; green or red: beyond "
             "noise (exact McNemar p &lt; 0.05), grey: within noise.</p><table id='pairs'><tr><th></th>"
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


def figures(summary: dict[str, Any], out: Path) -> list[str]:
    """The training curves and the per-class differences, drawn into ``out``."""
    parts = []
    if plot_runs_curves(summary, out):
        parts.append("<h2>Training curves</h2><img class='plot' id='curves' src='curves.png' alt='training curves'>")
    if plot_per_class_differences(summary, out / "per_class.png"):
        parts.append("<h2>Per-class accuracy against the baseline</h2><img class='plot' id='per-class' "
                     "src='per_class.png' alt='per-class differences'>")
    return parts


def fixes_table(summary: dict[str, Any]) -> list[str]:
    """Per method: the images it fixes and breaks against the baseline, and the classes most affected."""
    rows = [r for r in summary["runs"] if "fixes" in r]
    if not rows:
        return []
    parts = ["<h2>What each method fixes and breaks</h2><p>Test images the baseline gets wrong and the method right "
             "(fixes), and the reverse (breaks), by class.</p><table id='fixes'><tr><th>run</th><th>fixes</th>"
             "<th>breaks</th><th>classes fixed most</th><th>classes broken most</th></tr>"]
    for row in rows:
        fixed = ", ".join(f"{escape(x['class'])} ({x['images']})" for x in row["fixes"])
        broken = ", ".join(f"{escape(x['class'])} ({x['images']})" for x in row["breaks"])
        parts.append(f"<tr><td>{escape(row['name'])}</td><td>{row['vs_baseline']['only_first']}</td>"
                     f"<td>{row['vs_baseline']['only_second']}</td><td>{fixed}</td><td>{broken}</td></tr>")
    return parts + ["</table>"]


def explained_table(shown: dict[str, list[str]]) -> list[str]:
    """The same test images, one column per run."""
    if not shown:
        return []
    parts = ["<h2>The same test images, explained by every method</h2><p>The images where the methods disagree "
             "most; each figure gives the truth, the prediction and what the method looked at.</p><table "
             "id='explain'><tr>" + "".join(f"<th>{escape(n)}</th>" for n in shown) + "</tr>"]
    for j in range(len(next(iter(shown.values())))):
        parts.append("<tr>" + "".join(f"<td><a href='{files[j]}'><img class='overlay' src='{files[j]}' "
                                      f"alt='{escape(name)}'></a></td>" for name, files in shown.items()) + "</tr>")
    return parts + ["</table>"]


def build_page(summary: dict[str, Any], out: Path, shown: dict[str, list[str]]) -> Path:
    """Writes ``OUT/index.html`` (and its figures); returns its path."""
    parts = headline(summary) + results_table(summary) + pairs_table(summary) + figures(summary, out)
    parts += fixes_table(summary) + explained_table(shown)
    parts.append("<h2>How each run was trained</h2><ul>" + "".join(
        f"<li><b>{escape(r['name'])}</b>: <code>{escape(r['command'])}</code></li>" for r in summary["runs"]) + "</ul>")
    parts.append("<p>Numbers: <a href='results.json'>results.json</a>, <a href='results.csv'>results.csv</a>.</p>")
    path = out / "index.html"
    path.write_text(html_page(f"fgvc compare: {summary.get('title') or summary['dataset']}", parts, STYLE))
    return path


__all__ = ["build_page"]
