"""The recipes' image transforms, built from :class:`~fgvc.config.DataConfig` with torchvision.

Training: resize (square, as the papers do, or shorter side) -> random crop -> flip -> optional
AutoAugment / colour jitter / blur / sharpness -> tensor -> normalize. Evaluation: resize -> centre crop.
"""

from __future__ import annotations

from typing import Sequence

from torchvision import transforms as T

from ..config import DataConfig


def resize_size(cfg: DataConfig) -> int:
    """The resize before the crop: ``data.resize`` or ``img_size / 0.875``."""
    return cfg.resize or int(round(cfg.img_size / 0.875))


def _resize(cfg: DataConfig) -> T.Resize:
    r = resize_size(cfg)
    size = (r, r) if cfg.resize_mode == "square" else r
    return T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def build_train_transform(cfg: DataConfig, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Training-time augmentation of a recipe."""
    ops = [_resize(cfg), T.RandomCrop(cfg.img_size, pad_if_needed=True)]
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


def build_eval_transform(cfg: DataConfig, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The fixed evaluation transform: resize, centre crop, normalize."""
    return T.Compose([_resize(cfg), T.CenterCrop(cfg.img_size), T.ToTensor(), T.Normalize(mean, std)])


def eval_geometry(width: int, height: int, cfg: DataConfig) -> tuple[float, float, float, float]:
    """Maps original pixel coordinates to the evaluation crop: ``x' = x * sx - ox``, ``y' = y * sy - oy``.

    Used to compare what a method localizes with ground-truth boxes and parts.
    """
    r = resize_size(cfg)
    if cfg.resize_mode == "square":
        rw, rh = r, r
    else:
        s = r / min(width, height)
        rw, rh = int(round(width * s)), int(round(height * s))
    sx, sy = rw / width, rh / height
    ox, oy = (rw - cfg.img_size) / 2, (rh - cfg.img_size) / 2
    return sx, sy, float(int(round(ox))), float(int(round(oy)))
