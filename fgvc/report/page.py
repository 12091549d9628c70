"""A run's ``report/index.html``, rebuilt from the files its folder holds (``fgvc report RUN``), and the page
frame every fgvc page shares (the run report, the comparison)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .metrics import read_metrics
from .plots import pair_figure, plot_confusion, plot_curves, plot_per_class


def build_html(run_dir: Path) -> Path:
    """Writes ``report/index.html`` (and its plots) from what the run folder holds; returns its path."""
    run_dir = Path(run_dir)
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    labels = json.loads((run_dir / "labels.json").read_text()) if (run_dir / "labels.json").is_file() else {}
    names = labels.get("class_names", [])
    test = json.loads((folder / "test.json").read_text()) if (folder / "test.json").is_file() else None
    records = read_metrics(run_dir)
    parts = [f"<h1>fgvc run: {html.escape(run_dir.name)}</h1>"]
    config = run_dir / "config.yaml"
    if test:
        k = next((key for key in test if key.startswith("top") and key != "top1"), None)
        parts.append(f"<p class='big'>test top-1 <b>{test['top1']:.2f}%</b>"
                     + (f", top-{k[3:]} {test[k]:.2f}%" if k else "")
                     + f", mean per-class {test['mean_class_acc']:.2f}% on {test['num_images']} images "
                     f"({test['num_classes']} classes). Weights: {html.escape(str(test.get('weights', '')))}; rule: "
                     f"{html.escape(str(test.get('rule', '')))}.</p>")
    if config.is_file():
        parts.append("<p>Config: <a href='../config.yaml'>config.yaml</a>; log: <a href='../metrics.jsonl'>"
                     "metrics.jsonl</a>.</p>")
    notes = [n for r in records if r.get("kind") == "notes" for n in r.get("notes", [])]
    warnings = [r["message"] for r in records if r.get("kind") == "warning"]
    if notes or warnings:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "".join(f"<li class='warn'>warning: {html.escape(w)}</li>" for w in warnings) + "</ul>")
    parts.append("<h2>Training curves</h2>")
    if plot_curves(records, folder / "curves.png"):
        parts.append("<img class='plot' id='curves' src='curves.png' alt='training curves'>")
    else:
        parts.append("<p>No training records.</p>")
    confusion_file = folder / "test_confusion.npy"
    if test and confusion_file.is_file():
        confusion = np.load(confusion_file)
        caption = plot_confusion(confusion, names, folder / "confusion.png")
        parts.append(f"<h2>Confusion matrix</h2><p>{html.escape(caption)}.</p>"
                     "<img class='plot' id='confusion' src='confusion.png' alt='confusion matrix'>")
    if test and test.get("per_class"):
        plot_per_class(test["per_class"], names, folder / "per_class.png")
        parts.append("<h2>Per-class accuracy</h2><img class='plot' id='per-class' src='per_class.png' "
                     "alt='per-class accuracy'>")
    if test and test.get("confused_pairs"):
        parts.append("<h2>Most confused pairs</h2><table><tr><th>true</th><th>predicted as</th><th>images</th></tr>")
        parts += [f"<tr><td>{html.escape(p['true_name'])}</td><td>{html.escape(p['pred_name'])}</td>"
                  f"<td>{p['count']} of {p['of']}</td></tr>" for p in test["confused_pairs"]]
        parts.append("</table>")
        pred_file = folder / "test_predictions.npz"
        if pred_file.is_file():
            predictions = dict(np.load(pred_file))
            (folder / "pairs").mkdir(exist_ok=True)
            for i, pair in enumerate(test["confused_pairs"][:6]):
                if pair_figure(pair, predictions, folder / "pairs" / f"pair_{i + 1:02d}.png"):
                    parts.append(f"<img class='pair' src='pairs/pair_{i + 1:02d}.png' alt='confused pair {i + 1}'>")
    overlays = sorted((folder / "explain").glob("*.png"))
    if overlays:
        parts.append("<h2>What the model looks at</h2><p>Each figure: the true label, the prediction with its "
                     "probability (green when right, red when wrong), the input with the method's boxes and points "
                     "(the legend under each figure names each colour), and the method's maps.</p>")
        parts += [f"<div class='overlay'><img src='explain/{p.name}' alt='{html.escape(p.stem)}'></div>"
                  for p in overlays]
    out = folder / "index.html"
    out.write_text(html_page(f"fgvc report: {run_dir.name}", parts, "img.pair{display:block;margin:.5em 0}"
                             ".overlay img{max-width:100%;margin:.5em 0;border:1px solid #ddd}.warn{color:#b00}"))
    return out


def html_page(title: str, parts: Sequence[str], style: str = "") -> str:
    """A page that opens from its folder (no server, nothing from the network): ``parts`` in a body with fgvc's
    common style and ``style`` added."""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1600px}img.plot{max-width:100%;border:1px solid #ddd}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}.big{font-size:1.15em}"
            + style + "</style></head><body>" + "\n".join(parts) + "</body></html>\n")


__all__ = ["build_html", "html_page"]
