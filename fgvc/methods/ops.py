"""Operations several methods share: crop-and-zoom of boxes, class activation maps, map upsampling, the
largest connected component of a mask and its bounding box. All are batched (no Python loop over images)
and run on the tensors' device.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def log_mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_i softmax(logits_i))`` computed as a log-sum-exp of log-softmaxes (float32): the same value,
    without the underflow to ``-inf`` of the log of a probability that rounds to 0 (a confident network)."""
    stacked = torch.stack([x.float().log_softmax(-1) for x in logits])
    return torch.logsumexp(stacked, 0) - math.log(len(logits))


def classifier(in_features: int, num_classes: int, init: str = "torch") -> nn.Linear:
    """A new linear head: PyTorch's default initialization (``torch``), or timm's for a new ViT head
    (``trunc_normal``: truncated normal with std 0.02, zero bias)."""
    head = nn.Linear(in_features, num_classes)
    if init == "trunc_normal":
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
    elif init != "torch":
        raise ValueError(f"unknown head initialization '{init}'")
    return head


def class_activation_maps(feature_map: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM of one class per image: ``sum_c W[class, c] * F[b, c]`` -> ``[B, h, w]``."""
    return torch.einsum("bchw,bc->bhw", feature_map.float(), weight[classes].float())


def crop_and_zoom(images: torch.Tensor, boxes: torch.Tensor, size: Optional[tuple[int, int]] = None,
                  align_corners: bool = False) -> torch.Tensor:
    """Bilinear crop-and-resize of one box per image, batched (no Python loop).

    Args:
        images: ``[B, C, H, W]``.
        boxes: ``[B, 4]`` as ``x0, y0, x1, y1`` in pixels, edges included (pixel ``x1`` is in the crop).
        size: Output ``(h, w)``; the input size by default.
        align_corners: Sample like ``F.interpolate(..., align_corners=True)`` on the crop (RAMS-Trans's
            code); otherwise half-pixel centres.

    Returns:
        ``[B, C, h, w]``: each box stretched to the output size.
    """
    b, _, h, w = images.shape
    oh, ow = size or (h, w)
    boxes = boxes.to(images.dtype if images.is_floating_point() else torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)
    # The box as a range of pixel centres, in grid_sample's normalized coordinates (align_corners=True:
    # -1 and 1 are the centres of the first and last pixel).
    if align_corners:
        gx = torch.linspace(0, 1, ow, device=images.device, dtype=boxes.dtype)
        gy = torch.linspace(0, 1, oh, device=images.device, dtype=boxes.dtype)
        xs = x0[:, None] + (x1 - x0)[:, None] * gx
        ys = y0[:, None] + (y1 - y0)[:, None] * gy
    else:
        gx = (torch.arange(ow, device=images.device, dtype=boxes.dtype) + 0.5) / ow
        gy = (torch.arange(oh, device=images.device, dtype=boxes.dtype) + 0.5) / oh
        xs = (x0 - 0.5)[:, None] + (x1 - x0 + 1)[:, None] * gx
        ys = (y0 - 0.5)[:, None] + (y1 - y0 + 1)[:, None] * gy
    nx = xs / max(w - 1, 1) * 2 - 1
    ny = ys / max(h - 1, 1) * 2 - 1
    grid = torch.stack([nx[:, None, :].expand(b, oh, ow), ny[:, :, None].expand(b, oh, ow)], -1)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` -> ``[B, H, W]`` bilinear."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


@torch.compiler.disable  # a data-dependent loop: compiled code would unroll it; it runs eagerly in a compiled step
def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """The largest 8-connected component of each binary map, batched on the device.

    Every pixel takes the smallest raster index of its component by repeated 3 x 3 min-pooling inside the
    mask; the most frequent label wins, ties going to the component that starts first in raster order
    (what ``skimage.measure.label`` + the largest ``regionprops`` area gives).

    Args:
        mask: ``[B, H, W]`` booleans.

    Returns:
        ``[B, H, W]`` booleans: only the largest component (all False where the mask is empty).
    """
    b, h, w = mask.shape
    big = float(h * w)
    index = torch.arange(h * w, device=mask.device, dtype=torch.float32).view(1, h, w).expand(b, h, w)
    labels = torch.where(mask, index, torch.full_like(index, big))
    for it in range(h * w):
        pooled = -F.max_pool2d(-labels[:, None], 3, stride=1, padding=1)[:, 0]
        new = torch.where(mask, pooled, labels)
        if it % 4 == 3 and torch.equal(new, labels):
            break
        labels = new
    flat = labels.view(b, -1).long()
    counts = torch.zeros(b, h * w + 1, device=mask.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    counts[:, -1] = 0  # the background label
    best = counts.argmax(1)
    return (labels == best.view(b, 1, 1).float()) & mask


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box ``[B, 4]`` as ``(col0, row0, col1, row1)`` (inclusive) of each map's True cells; the whole
    map where a map is empty."""
    b, h, w = mask.shape
    rows, cols = mask.any(2), mask.any(1)
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    r0 = torch.where(rows, ar_h, h).min(1).values
    r1 = torch.where(rows, ar_h, -1).max(1).values
    c0 = torch.where(cols, ar_w, w).min(1).values
    c1 = torch.where(cols, ar_w, -1).max(1).values
    empty = ~rows.any(1)
    box = torch.stack([c0, r0, c1, r1], 1)
    full = torch.tensor([0, 0, w - 1, h - 1], device=mask.device)
    return torch.where(empty[:, None], full, box)
