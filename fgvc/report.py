"""The report of a run: numbers in files (``test.json``, ``test.md``, the confusion matrix), overlays of what
the model looks at, and ``report/index.html``, a page that opens from the folder (no server) with the
training curves, the confusion matrix, per-class accuracy, the most confused pairs with example images,
and the overlays with true label, prediction and probability.

The trainer calls :func:`write_final_report` after the test; ``fgvc report RUN`` calls :func:`build_html`
to rebuild the page from the files a run folder holds. Plots use matplotlib (Agg, no display).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .arrays import as_numpy
from .engine.metrics import confusion_matrix, report_markdown
from .engine.runlog import read_metrics

MAX_MATRIX = 60  # classes shown whole in the confusion matrix; beyond, the most confused block


def write_split_report(folder: Path, report: dict[str, Any], split: str, topk: int,
                       confusion: Optional[np.ndarray] = None, extra: Optional[dict[str, Any]] = None) -> None:
    """Writes ``<split>.json``, ``<split>.md`` and (given) ``<split>_confusion.npy`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.json").write_text(json.dumps(report, indent=1))
    (folder / f"{split}.md").write_text(report_markdown(report, f"{split} split", topk, extra))
    if confusion is not None:
        np.save(folder / f"{split}_confusion.npy", confusion)


def save_predictions(folder: Path, split: str, logits: torch.Tensor, targets: torch.Tensor, paths: Sequence[str],
                     topk: int = 5) -> None:
    """``<split>_predictions.npz``: per image its path, label and top-k classes with probabilities."""
    probs = logits.float().softmax(1)
    p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
    np.savez_compressed(folder / f"{split}_predictions.npz", paths=np.array(list(paths)), targets=as_numpy(targets),
                        top_index=as_numpy(idx), top_prob=as_numpy(p))


def write_final_report(run_dir: Path, report: dict[str, Any], logits: torch.Tensor, targets: torch.Tensor,
                       records: Sequence, class_names: Sequence[str], model, preprocess, device, cfg) -> Path:
    """Everything the trainer leaves after the test: files, overlays, ``index.html``. Returns the folder."""
    folder = run_dir / "report"
    k = len(class_names)
    write_split_report(folder, report, "test", cfg.eval.topk,
                       confusion_matrix(logits, targets, k) if k <= 1000 else None,
                       {"weights": report["weights"], "rule": report["rule"],
                        "unreadable training images skipped": report["skipped_unreadable_train"],
                        "non-finite steps skipped": report["nonfinite_steps_skipped"]})
    if len(records) == len(targets):  # no image was left out as unreadable
        save_predictions(folder, "test", logits, targets, [records.path(i) for i in range(len(records))]
                         if hasattr(records, "path") else [r.path for r in records], cfg.eval.topk)
    if cfg.eval.explain_samples > 0:
        write_overlays(model, records, preprocess, class_names, folder / "explain", device, cfg.eval.explain_samples)
    build_html(run_dir)
    return folder


def write_overlays(model, records: Sequence, preprocess, class_names: Sequence[str], out_dir: Path,
                   device: torch.device, count: int, batch_size: int = 8) -> list[Path]:
    """Overlays of ``count`` records spread evenly over ``records``, captioned with their true labels."""
    from .data.dataset import load_rgb
    from .explain import explain_tensors

    n = len(records)
    picks = [records[i] for i in np.linspace(0, n - 1, min(count, n)).round().astype(int)]
    for old in Path(out_dir).glob("*.png") if Path(out_dir).is_dir() else []:  # a rebuild replaces them
        old.unlink()
    transform = preprocess.transform()
    written = []
    for start in range(0, len(picks), batch_size):
        chunk = picks[start:start + batch_size]
        images = torch.stack([transform(load_rgb(r.path, r.crop_bottom)) for r in chunk]).to(device)
        names = [f"{start + j:03d}_{Path(r.path).stem}" for j, r in enumerate(chunk)]
        written += explain_tensors(model, images, class_names, (preprocess.mean, preprocess.std), out_dir, names,
                                   truths=[r.label for r in chunk])
    return written


# ---------------------------------------------------------------------------------------------------
# Plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Loss terms, learning rate, training accuracy and validation accuracy against the step."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return False
    plt = _plt()
    skip = {"kind", "step", "epoch", "lr", "grad_norm", "img_per_s", "mem_gib", "train_acc", "temperature"}
    terms = sorted({k for r in train for k, v in r.items() if k not in skip and isinstance(v, (int, float))})
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for term in terms:
        axes[0].plot(steps, [r.get(term, np.nan) for r in train], label=term, lw=2 if term == "loss" else 1)
    axes[0].set(title="training loss (total and terms)", xlabel="step")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r["lr"] for r in train], color="tab:purple")
    axes[1].set(title="learning rate (backbone)", xlabel="step")
    if any("train_acc" in r for r in train):
        axes[2].plot(steps, [r.get("train_acc", np.nan) for r in train], label="train (running)")
    if val:
        axes[2].plot([r["step"] for r in val], [r["top1"] for r in val], "o-", label="validation top-1")
    axes[2].set(title="accuracy (%)", xlabel="step", ylim=(0, 100))
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_run_comparison(runs: dict[str, list[dict[str, Any]]], path: Path, title: str = "",
                        reference: Sequence[str] = ()) -> bool:
    """Several runs side by side: each run's classification loss (its first ``cls`` term: the main or first
    scale's cross-entropy, without auxiliary terms) and running training accuracy against the step. The
    ``reference`` runs are drawn in thick black."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    drawn = False
    colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10").colors
    for i, (name, records) in enumerate(runs.items()):
        train = [r for r in records if r.get("kind") == "train"]
        if not train:
            continue
        term = next((k for k in train[0] if k.startswith("cls")), "loss")
        steps = [r["step"] for r in train]
        style = dict(lw=2.2, color="black") if name in reference else dict(lw=1.2, color=colors[i % len(colors)])
        axes[0].plot(steps, [r.get(term, np.nan) for r in train], label=name, **style)
        axes[1].plot(steps, [r.get("train_acc", np.nan) for r in train], label=name, **style)
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    axes[0].set(title="training loss: the first cls term, or the total", xlabel="step", yscale="log")
    axes[1].set(title="training accuracy, running (%)", xlabel="step", ylim=(0, 100))
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def confused_block(confusion: np.ndarray, limit: int = MAX_MATRIX) -> np.ndarray:
    """The classes to show: all up to ``limit``, else the ``limit`` classes in the most confusions."""
    k = len(confusion)
    if k <= limit:
        return np.arange(k)
    off = confusion - np.diag(np.diag(confusion))
    weight = off.sum(0) + off.sum(1)
    return np.sort(np.argsort(-weight, kind="stable")[:limit])


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> str:
    """The confusion matrix (row-normalized) as a picture; returns a caption."""
    plt = _plt()
    keep = confused_block(confusion)
    m = confusion[np.ix_(keep, keep)].astype(float)
    m = m / np.maximum(confusion[keep].sum(1, keepdims=True), 1)
    n = len(keep)
    size = min(14, max(5, 0.22 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
    if n <= MAX_MATRIX:
        labels = [str(class_names[i])[:28] for i in keep]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=max(4, min(9, 400 // max(n, 1))))
        ax.set_yticks(range(n), labels, fontsize=max(4, min(9, 400 // max(n, 1))))
    ax.set(xlabel="predicted", ylabel="true")
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    whole = len(confusion) == n
    return ("all classes" if whole else f"the {n} classes with the most confusions, of {len(confusion)}") + \
        "; rows are true classes, normalized to 1"


def plot_per_class(per_class: Sequence[Optional[float]], class_names: Sequence[str], path: Path) -> None:
    """Per-class accuracy, sorted (the worst classes named)."""
    plt = _plt()
    values = [(v, class_names[i]) for i, v in enumerate(per_class) if v is not None]
    values.sort()
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(range(len(values)), [v for v, _ in values], color="tab:blue", width=1.0)
    ax.set(title="per-class accuracy, sorted", xlabel="class (worst first)", ylabel="accuracy (%)", ylim=(0, 100))
    if len(values) <= 60:
        ax.set_xticks(range(len(values)), [str(n)[:24] for _, n in values], rotation=90, fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pair_figure(pair: dict[str, Any], predictions: dict[str, np.ndarray], path: Path, per_side: int = 3,
                thumb: int = 128) -> bool:
    """Images of the true class taken for the predicted one, beside images of the predicted class."""
    from PIL import Image

    from .data.dataset import load_rgb
    from .explain import _text_block

    paths, targets, top = predictions["paths"], predictions["targets"], predictions["top_index"][:, 0]
    wrong = [p for p, t, q in zip(paths, targets, top) if t == pair["true"] and q == pair["pred"]][:per_side]
    other = [p for p, t, q in zip(paths, targets, top) if t == pair["pred"] and q == pair["pred"]][:per_side]
    if not wrong:
        return False
    half = per_side * (thumb + 4)
    heads = [_text_block([(f"true {pair['true_name']}", (0, 0, 0)),
                          (f"predicted as {pair['pred_name']}", (200, 0, 0))], half),
             _text_block([(f"{pair['pred_name']}, predicted right (for comparison)", (0, 110, 0))], half)]
    top_h = max(h.height for h in heads)
    canvas = Image.new("RGB", (2 * half + 20, top_h + thumb + 4), (255, 255, 255))
    for side, (head, items) in enumerate(zip(heads, (wrong, other))):
        x0 = side * (half + 20)
        canvas.paste(head, (x0, 0))
        for j, p in enumerate(items):
            try:
                im = load_rgb(str(p)).resize((thumb, thumb))
            except Exception:  # noqa: BLE001 - a moved dataset: leave the slot empty
                continue
            canvas.paste(im, (x0 + j * (thumb + 4), top_h))
    canvas.save(path)
    return True


# ---------------------------------------------------------------------------------------------------
# The page


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


__all__ = ["write_split_report", "write_final_report", "write_overlays", "build_html", "save_predictions", "html_page"]
