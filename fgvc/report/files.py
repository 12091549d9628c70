"""What a run leaves after its test: the numbers in files (``test.json``, ``test.md``, the confusion matrix, the
per-image predictions), overlays of what the model looks at, and the page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..arrays import as_numpy
from .metrics import confusion_matrix, report_markdown
from .page import build_html


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
    from ..data.dataset import load_rgb
    from ..explain import explain_tensors

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


__all__ = ["write_split_report", "save_predictions", "write_final_report", "write_overlays"]
