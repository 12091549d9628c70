"""A trained run, assembled from its folder: the one way every command that uses a run gets its pieces.

``load_run(path)`` reads a run folder (its ``last.pt``) or any of its checkpoints and returns a
:class:`Run`: the resolved config, the label map, the model with its weights (EMA where kept), in eval
mode on the chosen device, and the evaluation :class:`~fgvc.data.transforms.Preprocess` (resize, crop,
normalization: the same object gives the transform, the crop geometry and an export's sidecar).
``Run.records(split)`` reads a split of the run's dataset again; ``Run.batches(items)`` turns image files,
PIL images or dataset records into normalized batches on the device, reporting unreadable files instead of
stopping. ``fgvc eval``, ``predict``, ``explain``, ``localize``, ``export``, ``report`` and ``serve`` all
go through here. A checkpoint is all it needs: no pretrained weight file, no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from PIL import Image

from .config import RunConfig, config_from_saved
from .data.dataset import load_rgb
from .data.record import Record
from .data.transforms import Preprocess, interpolation, normalization
from .engine.checkpoint import load_checkpoint, resolve_checkpoint
from .engine.distributed import resolve_device
from .errors import DataError, FgvcError
from .methods import create_model_from_config
from .methods.finetune import merge_adapters
from .methods.base import Method

Item = Union[str, Path, Image.Image, Record]


@dataclass
class Batch:
    """Normalized images on the device, the items they came from (and their positions in the input), and the
    items that could not be read, with the reason."""

    images: torch.Tensor
    items: list[Item]
    positions: list[int]
    unreadable: list[tuple[Item, str]]


@dataclass
class Run:
    """A model restored from a checkpoint, with what it needs to read images."""

    model: Method
    cfg: RunConfig
    class_names: list[str]
    class_ids: list[str]
    labels: dict[str, Any]
    checkpoint: Path
    step: int
    preprocess: Preprocess
    device: torch.device

    @property
    def folder(self) -> Path:
        """The run folder (where the checkpoint lies)."""
        return self.checkpoint.parent

    @property
    def method(self) -> str:
        return self.cfg.model.method

    def records(self, split: str, data_root: Optional[str] = None) -> list[Record]:
        """The records of one split of the run's dataset (``test``, the run's seeded ``val``, or ``train``),
        read again from disk (``data_root`` if it moved) and checked against the checkpoint's label map."""
        from .data import build_index, make_splits

        cfg = self.cfg
        if data_root:
            cfg.data.root = data_root
        index = build_index(cfg.data, cache=self.folder / "index")  # the run's copy while its files are unchanged
        if index.fingerprint() != self.labels.get("fingerprint"):
            print("warning: the dataset differs from the one this run was trained on (other files or labels)")
        if index.num_classes != len(self.class_names):
            raise FgvcError(f"the dataset has {index.num_classes} classes, the checkpoint {len(self.class_names)}")
        splits = make_splits(index, cfg.data, cfg.train.seed)
        records = {"test": splits.test, "val": splits.val, "train": splits.train}[split]
        if not records:
            raise FgvcError(f"no images in the '{split}' split of this run")
        return records

    def read(self, item: Item) -> Image.Image:
        """One item as an RGB PIL image (a record's banner crop applied).

        Raises:
            DataError: For a missing or unreadable file, naming it.
        """
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        path, crop = (item.path, item.crop_bottom) if isinstance(item, Record) else (str(item), 0)
        try:
            return load_rgb(path, crop)
        except FileNotFoundError:
            raise DataError(f"image not found: {path}") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            raise DataError(f"cannot read image {path}: {e.__class__.__name__}: {e}") from None

    def batches(self, items: Sequence[Item], batch_size: int = 32, skip_unreadable: bool = True) -> Iterator[Batch]:
        """Normalized batches of ``items`` on the run's device; unreadable files are reported in each batch's
        ``unreadable`` (or raise with ``skip_unreadable=False``) and left out of its ``images``."""
        transform = self.preprocess.transform()
        for start in range(0, len(items), batch_size):
            chunk, tensors, kept, positions, bad = items[start:start + batch_size], [], [], [], []
            for offset, item in enumerate(chunk):
                try:
                    tensors.append(transform(self.read(item)))
                    kept.append(item)
                    positions.append(start + offset)
                except DataError as e:
                    if not skip_unreadable:
                        raise
                    bad.append((item, str(e)))
            images = torch.stack(tensors).to(self.device) if tensors else \
                torch.zeros(0, 3, self.preprocess.img_size, self.preprocess.img_size, device=self.device)
            yield Batch(images=images, items=kept, positions=positions, unreadable=bad)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """The method's inference rule on a batch: class probabilities ``[B, K]`` (float32)."""
        return self.model(images).float().softmax(1)


def load_run(path: Union[str, Path], device: str = "auto", use_ema: bool = True, merge: bool = True) -> Run:
    """Loads a run folder (its ``last.pt``) or a checkpoint file, in eval mode.

    Args:
        path: Run folder or checkpoint.
        device: ``auto``, ``cpu``, ``cuda``...
        use_ema: Use the EMA weights when the run kept them.
        merge: Fold a LoRA run's adapters into their layers (``fgvc.methods.finetune.merge_adapters``).
    """
    ckpt_path = resolve_checkpoint(path)
    state = load_checkpoint(ckpt_path)
    cfg = config_from_saved(state["config"])
    cfg.model.pretrained, cfg.model.pretrained_file = False, None  # the checkpoint holds every weight
    labels = state["labels"]
    dev = resolve_device(device)
    with torch.device(dev):  # built on the device (its random initialization is overwritten anyway)
        model = create_model_from_config(cfg, len(labels["class_names"]))
    weights = state["model"]
    if use_ema and state.get("ema"):
        weights = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    model.load_state_dict(weights)
    model.load_checkpoint_state(state.get("method_state") or {})
    if merge:
        merge_adapters(model)  # a LoRA run's adapters folded into their layers: no peft in what is used or exported
    model.to(dev).eval()
    if cfg.data.interpolation == "auto":  # a config saved without resolving it
        cfg.data.interpolation = interpolation(cfg.data, model)
    mean, std = normalization(cfg.data, model)
    return Run(model=model, cfg=cfg, class_names=list(labels["class_names"]),
               class_ids=list(labels.get("class_ids", labels["class_names"])), labels=labels, checkpoint=ckpt_path,
               step=int(state.get("step", 0)), preprocess=Preprocess.from_config(cfg.data, mean, std), device=dev)


__all__ = ["Run", "Batch", "load_run"]
