"""The top of the comparison's page: what was compared and how, the methods x backbones grid with every cell's
difference to the same backbone's plain fine-tuning, accuracy against cost with the Pareto fronts, and the tuning
(its space, its trials, the settings chosen, and what it cost)."""

from __future__ import annotations

from html import escape
from typing import Any

from .cost import AXES
from .results import chosen_text, interval, status
from .space import format_value
from .stats import describe

CELL_CLASS = {"better": "good", "worse": "bad", "within noise": "noise"}


def setting_words(summary: dict[str, Any]) -> str:
    """``10 epochs at 448 px, the first 20 classes``: the budget every run shared."""
    budget = summary["budget"]
    epochs = budget.get("epochs")
    words = (f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "the recipes’ epochs") + \
        f" at {budget.get('img_size', 'the recipes’')} px"
    return words + (f", the first {budget['classes']} classes" if budget.get("classes") else "")


def protocol_words(summary: dict[str, Any]) -> str:
    """How every row was trained, the same for all."""
    if summary["tune"]:
        return (f"Every row was tuned the same way: {summary['tune']} trials drawn by Optuna's TPE sampler over its "
                f"recipe's space (below), each trial {setting_words(summary)}, judged after every epoch on a seeded, "
                f"stratified validation split of {100 * summary['val_fraction']:g}% of the training set (Optuna's "
                "successive-halving pruner); the test split was never read while tuning. The best trial's setting "
                "was then trained on the whole training set and tested once.")
    return (f"Every row ran its fine-tuning recipe as it is, {setting_words(summary)}: a verdict measures the method "
            "and its recipe together (--tune N tunes every row the same way).")


def headline(summary: dict[str, Any]) -> list[str]:
    """The title, the data, how the rows were trained, and each backbone's best row."""
    parts = [f"<h1>{escape(summary.get('title') or 'fgvc compare')}</h1>",
             f"<p class='big'>{escape(summary['dataset'])}: {summary['classes']} classes, {summary['test_images']} "
             f"test images; {escape(', '.join(summary['backbones']))}; fine-tuning "
             f"{escape(', '.join(summary['modes']))}. {escape(summary['machine'])}, {summary['date']}.</p>",
             f"<p id='protocol'>{escape(protocol_words(summary))}</p>"]
    for backbone in summary["backbones"]:
        tested = [r for r in summary["rows"] if r["backbone"] == backbone and r.get("top1") is not None]
        if not tested:
            continue
        best = max(tested, key=lambda r: r["top1"])
        difference = best.get("vs_baseline")
        reference = summary["per_backbone"][backbone]["reference"]
        against = f"; against plain fine-tuning {escape(describe(difference, best['name'], reference))}" \
            if difference else ""
        parts.append(f"<p class='big'>On {escape(backbone)} the highest test top-1 is <b>{escape(best['name'])}</b> "
                     f"at {best['top1']:.2f}%{against}.</p>")
    return parts


def grid(summary: dict[str, Any]) -> list[str]:
    """Rows (method and mode) down, backbones across: test top-1 and the paired difference to the backbone's plain
    fine-tuning with its verdict; a cell that does not apply says why."""
    names = list(dict.fromkeys(r["name"] for r in summary["rows"]))
    cells = {(r["name"], r["backbone"]): r for r in summary["rows"]}
    reasons: dict[str, int] = {}  # why a cell does not apply -> its note's number
    parts = ["<h2>Methods x backbones</h2><p>Test top-1; below it the difference to the same backbone's plain "
             "fine-tuning in points with its paired 95% interval (green or red: beyond noise, exact McNemar p &lt; "
             "0.05).</p><table id='grid'><tr><th></th>"
             + "".join(f"<th>{escape(b)}</th>" for b in summary["backbones"]) + "</tr>"]
    for name in names:
        row_cells = []
        for backbone in summary["backbones"]:
            r = cells.get((name, backbone))
            if r is None:
                row_cells.append("<td></td>")
            elif r.get("refused"):
                reasons.setdefault(r["refused"], len(reasons) + 1)
                row_cells.append(f"<td class='na' title='{escape(r['refused'])}'>does not apply "
                                 f"<sup>{reasons[r['refused']]}</sup></td>")
            elif r.get("top1") is None:
                row_cells.append(f"<td class='na'>{escape(status(r))}</td>")
            else:
                difference = r.get("vs_baseline")
                below = (f"<br><small>{interval(difference, 1)} {escape(difference['verdict'])}</small>"
                         if difference else "<br><small>reference</small>" if r.get("reference") else "")
                kind = CELL_CLASS.get((difference or {}).get("verdict"), "")
                row_cells.append(f"<td class='{kind}'>{r['top1']:.2f}%{below}</td>")
        parts.append(f"<tr><th>{escape(name)}</th>{''.join(row_cells)}</tr>")
    parts.append("</table>")
    if reasons:
        parts.append("<ol id='not-applicable'>" + "".join(f"<li value='{n}'>{escape(why)}</li>"
                                                          for why, n in reasons.items()) + "</ol>")
    return parts


def costs(summary: dict[str, Any], drawn: bool) -> list[str]:
    """The accuracy-against-cost figure and, per cost, the rows on its Pareto front."""
    if not drawn:
        return []
    tested = {r["key"]: r for r in summary["rows"] if r.get("top1") is not None}
    items = []
    for axis, (_, _, words) in AXES.items():
        front = [tested[k] for k in summary["pareto"].get(axis, []) if k in tested]
        items.append(f"<li>{escape(words)}: " + ", ".join(f"{escape(r['name'])} on {escape(r['backbone'])}"
                                                           for r in front) + "</li>")
    return ["<h2>Accuracy against cost</h2><p>Training seconds per image on this device (from each run's log), "
            "inference images/s at batch 64 on this device, and the parameters each row trained (what LoRA and "
            "a linear probe save; the table lists all the parameters as served beside); the Pareto front of each: "
            "the rows no other row beats on both accuracy and that cost.</p>",
            "<img class='plot' id='costs' src='costs.png' alt='accuracy against cost'><ul id='pareto'>"
            + "".join(items) + "</ul>"]


def tuning(summary: dict[str, Any]) -> list[str]:
    """Per row: its space, its trials (setting, validation accuracy per epoch, pruned or kept, minutes) and the
    setting chosen; then what the tuning cost against untuned runs."""
    tuned = [r for r in summary["rows"] if r.get("trials")]
    if not summary["tune"] or not tuned:
        return []
    parts = ["<h2>Tuning</h2><div id='tuning'>"]
    for r in tuned:
        parts.append(f"<h3>{escape(r['name'])} on {escape(r['backbone'])}</h3><p>Space: "
                     + escape("; ".join(r.get("space", []))) + f". Chosen: <b>{escape(chosen_text(r) or '-')}</b>."
                     "</p><table class='trials'><tr><th>trial</th><th>setting</th><th>validation top-1 by epoch</th>"
                     "<th>outcome</th><th>minutes</th></tr>")
        for t in r["trials"]:
            setting = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(t["params"].items()))
            by_epoch = ", ".join(f"{v:.1f}" for _, v in sorted(t["val_by_epoch"].items()))
            outcome = {"complete": "kept", "pruned": "pruned", "fail": "failed"}.get(t["state"], t["state"])
            parts.append(f"<tr><td>{t['number'] + 1}</td><td>{escape(setting)}</td><td>{by_epoch}</td>"
                         f"<td>{outcome}</td><td>{t['minutes']:.1f}</td></tr>")
        parts.append("</table>")
    cost = summary.get("tuning_cost") or {}
    if cost:
        parts.append(f"<p id='tuning-cost'>The trials trained {cost['epochs_trained']} epochs of the "
                     f"{cost['epochs_budget']} that {cost['trials']} untuned trials would have: the pruner saved "
                     f"{100 * cost['saved']:.0f}%. They took {cost['trial_minutes']:.1f} minutes; the final runs "
                     f"{cost['final_minutes']:.1f}.</p>")
    return parts + ["</div>"]


__all__ = ["headline", "grid", "costs", "tuning", "setting_words", "protocol_words"]
