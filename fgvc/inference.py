"""Using a trained run: load it, predict on new images, explain them, evaluate it again.

A checkpoint carries the resolved config, the label map and the weights, so a run folder (or any of its
checkpoints) is all :class:`Predictor` needs: no dataset, no pretrained weight file, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from PIL import Image

from .config import RunConfig, config_from_saved
from .data.dataset import load_rgb
from .data.readers.folder import list_images
from .data.transforms import build_eval_transform
from .engine.checkpoint import load_checkpoint, resolve_checkpoint
from .engine.distributed import resolve_device
from .errors import FgvcError
from .methods.base import Method
from .registry import create_model_from_config


@dataclass
class LoadedRun:
    """A model restored from a checkpoint, with what it needs to read images."""

    model: Method
    cfg: RunConfig
    class_names: list[str]
    class_ids: list[str]
    labels: dict[str, Any]
    checkpoint: Path
    step: int
    transform: Any
    mean_std: tuple[Sequence[float], Sequence[float]]
    device: torch.device


def load_run(path: Union[str, Path], device: str = "auto", use_ema: bool = True) -> LoadedRun:
    """Loads a run folder (its ``last.pt``) or a checkpoint file, in eval mode.

    Args:
        path: Run folder or checkpoint.
        device: ``auto``, ``cpu``, ``cuda``...
        use_ema: Use the EMA weights when the run kept them.
    """
    ckpt_path = resolve_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    cfg = config_from_saved(state["config"])
    cfg.model.pretrained, cfg.model.pretrained_file = False, None  # the checkpoint holds every weight
    labels = state["labels"]
    model = create_model_from_config(cfg, len(labels["class_names"]))
    weights = state["model"]
    if use_ema and state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    model.load_state_dict(weights)
    model.load_checkpoint_state(state.get("method_state") or {})
    dev = resolve_device(device)
    model.to(dev).eval()
    mean, std = model.mean_std
    mean, std = cfg.data.mean or mean, cfg.data.std or std
    return LoadedRun(model=model, cfg=cfg, class_names=list(labels["class_names"]),
                     class_ids=list(labels.get("class_ids", labels["class_names"])), labels=labels,
                     checkpoint=ckpt_path, step=int(state.get("step", 0)),
                     transform=build_eval_transform(cfg.data, mean, std), mean_std=(mean, std), device=dev)


class Predictor:
    """Class names and probabilities for new images.

    Example::

        p = Predictor("runs/cub-transfg")
        for path, top in zip(paths, p.predict(paths, topk=3)):
            print(path, top[0]["name"], top[0]["prob"])
    """

    def __init__(self, path: Union[str, Path], device: str = "auto", batch_size: int = 32):
        self.run = load_run(path, device)
        self.batch_size = batch_size

    @torch.no_grad()
    def predict(self, images: Sequence[Union[str, Path, Image.Image]], topk: int = 5) -> list[list[dict[str, Any]]]:
        """Top-``topk`` predictions per image: ``[{"name", "id", "index", "prob"}, ...]``."""
        run = self.run
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            pil = [im.convert("RGB") if isinstance(im, Image.Image) else _open(im) for im in chunk]
            x = torch.stack([run.transform(im) for im in pil]).to(run.device)
            probs = run.model(x).float().softmax(1)
            p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
            for pi, ii in zip(p.tolist(), idx.tolist()):
                out.append([{"name": run.class_names[i], "id": run.class_ids[i], "index": i, "prob": v}
                            for v, i in zip(pi, ii)])
        return out

    def explain(self, paths: Sequence[Union[str, Path]], out_dir: Union[str, Path]) -> list[Path]:
        """Writes one overlay PNG per image into ``out_dir``; returns their paths."""
        from .explain import explain_paths

        run = self.run
        return explain_paths(run.model, [str(p) for p in paths], run.transform, run.class_names, Path(out_dir),
                             run.device, run.mean_std)


def _open(path) -> Image.Image:
    try:
        return load_rgb(str(path))
    except FileNotFoundError:
        raise FgvcError(f"image not found: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise FgvcError(f"cannot read image {path}: {e.__class__.__name__}: {e}") from None


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


def run_split(run: LoadedRun, split: str, data_root: Optional[str] = None) -> list:
    """The records of one split of a run's dataset (``test``, the run's seeded ``val``, or ``train``), read
    again from disk (``data_root`` if it moved) and checked against the checkpoint's label map."""
    from .data import build_index, make_splits

    cfg = run.cfg
    if data_root:
        cfg.data.root = data_root
    index = build_index(cfg.data)
    if index.fingerprint() != run.labels.get("fingerprint"):
        print("warning: the dataset differs from the one this run was trained on (other files or labels)")
    if index.num_classes != len(run.class_names):
        raise FgvcError(f"the dataset has {index.num_classes} classes, the checkpoint {len(run.class_names)}")
    splits = make_splits(index, cfg.data, cfg.train.seed)
    records = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
    if not records:
        raise FgvcError(f"no images in the '{split}' split of this run")
    return records


def evaluate_run(path: Union[str, Path], data_root: Optional[str] = None, split: str = "test",
                 device: str = "auto", batch_size: Optional[int] = None, progress: bool = True) -> dict[str, Any]:
    """Evaluates a run's checkpoint on a split of its dataset with the method's fixed rule.

    Args:
        path: Run folder or checkpoint.
        data_root: Where the dataset is now, if it moved.
        split: ``test`` (the official test split) or ``val`` (the seeded validation split of the run).
        device: Where to run.
        batch_size: Evaluation batch (default: the run's).

    Returns:
        The report (see :func:`fgvc.engine.metrics.classification_report`), also written next to the
        checkpoint as ``report/eval-<split>.{json,md}``.
    """
    from .engine.evaluate import predict_split
    from .engine.metrics import classification_report
    from .engine.trainer import write_report

    run = load_run(path, device)
    cfg = run.cfg
    records = run_split(run, split, data_root)
    logits, targets, excluded = predict_split(run.model, records, run.transform,
                                              batch_size=batch_size or cfg.data.eval_batch_size, device=run.device,
                                              num_workers=min(cfg.data.num_workers, 4), bad_data=cfg.data.bad_data,
                                              progress=progress, desc=split)
    report = classification_report(logits, targets, run.class_names, cfg.eval.topk, cfg.eval.confused_pairs)
    report.update(excluded_unreadable=excluded, checkpoint=str(run.checkpoint), step=run.step)
    write_report(run.checkpoint.parent / "report", report, f"eval-{split}", cfg.eval.topk,
                 extra={"checkpoint": f"{run.checkpoint} (step {run.step})"})
    return report
