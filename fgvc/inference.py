"""Using a trained run: predict on new images, explain them, evaluate it again.

Everything here starts from :func:`fgvc.run.load_run` (a run folder or checkpoint is all it needs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from PIL import Image

from .data.readers.folder import list_images
from .errors import FgvcError
from .run import Item, Run, load_run


class Predictor:
    """Class names and probabilities for new images.

    Example::

        p = Predictor("runs/cub-transfg")
        for path, top in zip(paths, p.predict(paths, topk=3)):
            print(path, top[0]["name"], top[0]["prob"])
    """

    def __init__(self, path: Union[str, Path, Run], device: str = "auto", batch_size: int = 32):
        self.run = path if isinstance(path, Run) else load_run(path, device)
        self.batch_size = batch_size
        self.unreadable: list[tuple[Item, str]] = []  # of the last call, when skipping

    def top(self, probs: torch.Tensor, topk: int) -> list[list[dict[str, Any]]]:
        """The ``topk`` classes of each row of ``probs``: ``[{"name", "id", "index", "prob"}, ...]``."""
        run = self.run
        p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[{"name": run.class_names[i], "id": run.class_ids[i], "index": i, "prob": v} for v, i in zip(pi, ii)]
                for pi, ii in zip(p.tolist(), idx.tolist())]

    def predict(self, images: Sequence[Union[str, Path, Image.Image]], topk: int = 5,
                skip_unreadable: bool = False) -> list[Optional[list[dict[str, Any]]]]:
        """Top-``topk`` predictions per image, in input order. With ``skip_unreadable`` an unreadable file gets
        ``None`` and is listed in ``self.unreadable``; otherwise it raises :class:`~fgvc.errors.DataError`."""
        if topk < 1:
            raise FgvcError(f"topk must be at least 1, got {topk}")
        results: dict[int, list[dict[str, Any]]] = {}
        self.unreadable = []
        for batch in self.run.batches(list(images), self.batch_size, skip_unreadable=skip_unreadable):
            self.unreadable += batch.unreadable
            if batch.items:
                results.update(zip(batch.positions, self.top(self.run.probabilities(batch.images), topk)))
        return [results.get(i) for i in range(len(images))]

    def explain(self, paths: Sequence[Union[str, Path]], out_dir: Union[str, Path],
                skip_unreadable: bool = True) -> list[Path]:
        """Writes one overlay PNG per readable image into ``out_dir``; returns their paths (unreadable files
        are listed in ``self.unreadable``)."""
        from .explain import explain_tensors

        run, written = self.run, []
        self.unreadable = []
        for batch in run.batches([str(p) for p in paths], 8, skip_unreadable=skip_unreadable):
            self.unreadable += batch.unreadable
            if batch.items:
                names = [f"{i:03d}_{Path(p).stem}" for i, p in zip(batch.positions, batch.items)]
                written += explain_tensors(run.model, batch.images, run.class_names,
                                           (run.preprocess.mean, run.preprocess.std), Path(out_dir), names)
        return written


def collect_images(inputs: Sequence[Union[str, Path]]) -> list[Path]:
    """Image files named directly or found (recursively) in the named folders."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise FgvcError(f"no images found in {p}")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FgvcError(f"image or folder not found: {p}")
    return files


def evaluate_run(path: Union[str, Path, Run], data_root: Optional[str] = None, split: str = "test",
                 device: str = "auto", batch_size: Optional[int] = None, progress: bool = True) -> dict[str, Any]:
    """Evaluates a run's checkpoint on a split of its dataset with the method's fixed rule.

    Args:
        path: Run folder or checkpoint (or a loaded :class:`~fgvc.run.Run`).
        data_root: Where the dataset is now, if it moved.
        split: ``test`` (the official test split) or ``val`` (the seeded validation split of the run).
        device: Where to run.
        batch_size: Evaluation batch (default: the run's).

    Returns:
        The report (see :func:`fgvc.report.metrics.classification_report`), also written next to the
        checkpoint as ``report/eval-<split>.{json,md}``.
    """
    from .engine.evaluate import predict_split
    from .report import write_split_report
    from .report.metrics import classification_report

    run = path if isinstance(path, Run) else load_run(path, device)
    cfg = run.cfg
    records = run.records(split, data_root)
    logits, targets, excluded = predict_split(run.model, records, run.preprocess.transform(),
                                              batch_size=batch_size or cfg.data.eval_batch_size, device=run.device,
                                              num_workers=min(cfg.data.num_workers, 4), bad_data=cfg.data.bad_data,
                                              progress=progress, desc=split)
    report = classification_report(logits, targets, run.class_names, cfg.eval.topk, cfg.eval.confused_pairs)
    report.update(excluded_unreadable=excluded, checkpoint=str(run.checkpoint), step=run.step)
    write_split_report(run.folder / "report", report, f"eval-{split}", cfg.eval.topk,
                       extra={"checkpoint": f"{run.checkpoint} (step {run.step})"})
    return report


__all__ = ["Predictor", "collect_images", "evaluate_run", "load_run"]
