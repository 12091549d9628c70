"""The recipes' image transforms, built from :class:`~fgvc.config.DataConfig` with torchvision.

Training: resize (square, as the papers do, or shorter side) -> random crop -> flip -> optional
AutoAugment / colour jitter / blur / sharpness -> tensor -> normalize. Evaluation (:class:`Preprocess`):
resize -> centre crop -> tensor -> normalize; the same object gives the geometry that maps original
pixels into the crop and the description an exported model carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from torchvision import transforms as T

from ..config import DataConfig


def resize_size(cfg: DataConfig) -> int:
    """The resize before the crop: ``data.resize`` or ``img_size / 0.875``."""
    return cfg.resize or int(round(cfg.img_size / 0.875))


MODES = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
         "nearest": T.InterpolationMode.NEAREST}


def _resize(size: int, mode: str, interpolation: str = "bilinear") -> T.Resize:
    return T.Resize((size, size) if mode == "square" else size, interpolation=MODES[interpolation], antialias=True)


def normalization(cfg: DataConfig, model: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std`` where the recipe sets them, else the backbone's pretrained normalization."""
    mean, std = model.mean_std
    return tuple(cfg.mean or mean), tuple(cfg.std or std)


def interpolation(cfg: DataConfig, model: Any) -> str:
    """``data.interpolation`` where set, else the backbone's pretrained configuration's (bilinear where it names
    none fgvc knows)."""
    if cfg.interpolation != "auto":
        return cfg.interpolation
    named = str((getattr(model, "pretrained_cfg", None) or {}).get("interpolation", "bilinear"))
    return named if named in MODES else "bilinear"


def build_train_transform(cfg: DataConfig, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Training-time augmentation of a recipe."""
    ops = [_resize(resize_size(cfg), cfg.resize_mode, "bilinear" if cfg.interpolation == "auto" else cfg.interpolation),
           T.RandomCrop(cfg.img_size, padding=cfg.crop_padding or None, pad_if_needed=True)]
    if cfg.hflip:
        ops.append(T.RandomHorizontalFlip())
    if cfg.autoaugment:
        ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, fill=[128, 128, 128]))
    if cfg.color_jitter:
        ops.append(T.ColorJitter(*cfg.color_jitter))
    if cfg.blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 5.0))], p=cfg.blur_p))
    if cfg.sharpness_p > 0:
        ops.append(T.RandomAdjustSharpness(1.5, p=cfg.sharpness_p))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


@dataclass(frozen=True)
class Preprocess:
    """The fixed evaluation preprocessing: resize (``square``: to ``resize x resize``; ``shorter``: the shorter side
    to ``resize``; antialiased, with the run's interpolation), centre crop of ``img_size``, scaling to [0, 1],
    normalization."""

    img_size: int
    resize: int
    resize_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, cfg: DataConfig, mean: Sequence[float], std: Sequence[float]) -> "Preprocess":
        """From a run's (resolved) data config: ``data.interpolation`` is no longer ``auto`` there."""
        chosen = "bilinear" if cfg.interpolation == "auto" else cfg.interpolation
        return cls(cfg.img_size, resize_size(cfg), cfg.resize_mode, tuple(mean), tuple(std), chosen)

    def transform(self) -> T.Compose:
        """PIL image -> normalized ``[3, img_size, img_size]`` tensor."""
        return T.Compose([_resize(self.resize, self.resize_mode, self.interpolation), T.CenterCrop(self.img_size),
                          T.ToTensor(), T.Normalize(self.mean, self.std)])

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """The image size after the resize (torchvision's rule: the long side truncated)."""
        if self.resize_mode == "square":
            return self.resize, self.resize
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Maps original pixel coordinates into the crop: ``x' = x * sx - ox``, ``y' = y * sy - oy``."""
        rw, rh = self.resized(width, height)
        ox = int(round((rw - self.img_size) / 2.0))  # torchvision's CenterCrop offsets
        oy = int(round((rh - self.img_size) / 2.0))
        return rw / width, rh / height, float(ox), float(oy)

    def describe(self) -> dict[str, Any]:
        """The steps in words and numbers, for a program outside fgvc (an exported model's sidecar)."""
        resize = (f"resize to {self.resize}x{self.resize}" if self.resize_mode == "square" else
                  f"resize the shorter side to {self.resize} (the longer side truncated)")
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std), interpolation=f"{self.interpolation} (antialiased)",
                 steps=["convert to RGB", resize, f"centre crop {self.img_size}x{self.img_size}",
                        "scale to [0, 1] (divide by 255)", "subtract mean, divide by std (per channel, RGB order)",
                        "layout NCHW, float32"])
        return d


__all__ = ["Preprocess", "build_train_transform", "normalization", "interpolation", "resize_size"]
