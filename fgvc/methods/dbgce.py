"""DB + GCE: the diversification block suppresses the peak regions of class activation maps during training,
and the gradient-boosting cross-entropy focuses the loss on the hardest negative classes.

Paper: Sun, Cholakkal, Khan, Khan, Shao. "Fine-grained Recognition: Accounting for Subtle Differences
between Similar Classes", AAAI 2020. https://arxiv.org/abs/1912.06842
Official code: none found. The closest public reference is mmaaz60/ssl_for_fgvc (a third-party student
project; layers/diversification_block.py, loss/gb_loss.py), read at ccc119f.

Two reusable parts: :class:`DiversificationBlock` (a module usable on any ``[B, K, h, w]`` class maps) and
:func:`fgvc.losses.gradient_boosting_ce` (``train.loss: gce``, usable with every method). The ``dbgce``
method puts them together on any timm backbone with spatial features:

- CAM head: a 1x1 convolution (with bias) from the last feature map to K class maps, replacing pooling
  and the linear classifier.
- Training: scores are the global average of the class maps after the diversification block.
- Inference: the global average of the unsuppressed maps (equal to a linear head on pooled features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..backbones import to_nchw
from ..errors import ConfigError
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .registry import register_method


class DiversificationBlock(nn.Module):
    """Randomly suppresses the most activated regions of each class map (training only).

    For every image and class map ``M_c``:

    - peak suppression: the argmax cell(s) of ``M_c`` are suppressed with probability ``p_peak``;
    - patch suppression: the map is tiled from the top-left corner into patches of ``patch_cells x
      patch_cells`` cells (the last row and column of patches are smaller when the size does not divide,
      so the whole map is covered); each patch is suppressed with probability ``p_patch``, except its peak
      cells, which only the peak draw governs;
    - suppressed cells are multiplied by ``alpha`` (gradient still flows through them, scaled).

    In eval mode it is the identity. The masks are drawn without gradient from the global generator of
    the maps' device (restored on resume).

    Args:
        p_peak: Probability of suppressing a map's peak (the paper: 0.5).
        p_patch: Probability of suppressing each patch (the paper: 0.5).
        patch_cells: Patch side in feature-map cells (the paper's "fixed-size patches"; mmaaz60 uses 3).
        alpha: Suppression factor (the paper: 0.1).
    """

    def __init__(self, p_peak: float = 0.5, p_patch: float = 0.5, patch_cells: int = 3, alpha: float = 0.1):
        super().__init__()
        if patch_cells < 1:
            raise ConfigError("method.patch_cells must be at least 1")
        self.p_peak, self.p_patch, self.patch_cells, self.alpha = p_peak, p_patch, patch_cells, alpha

    @staticmethod
    def peak_mask(maps: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` booleans: the cells equal to each map's maximum."""
        return maps == maps.amax((2, 3), keepdim=True)

    def patch_index(self, h: int, w: int, device=None) -> tuple[torch.Tensor, int, int]:
        """Each cell's patch number ``[h, w]``, and the number of patch rows and columns."""
        g = self.patch_cells
        rows, cols = math.ceil(h / g), math.ceil(w / g)
        r = torch.arange(h, device=device) // g
        c = torch.arange(w, device=device) // g
        return r[:, None] * cols + c[None, :], rows, cols

    @torch.no_grad()
    def suppression_mask(self, maps: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[B, K, h, w]`` booleans: the cells to suppress for this draw."""
        b, k, h, w = maps.shape
        peak = self.peak_mask(maps)
        peak_on = torch.rand(b, k, 1, 1, device=maps.device, generator=generator) < self.p_peak
        index, rows, cols = self.patch_index(h, w, maps.device)
        patch_on = torch.rand(b, k, rows * cols, device=maps.device, generator=generator) < self.p_patch
        patches = patch_on[:, :, index.flatten()].view(b, k, h, w)
        return (peak & peak_on) | (patches & ~peak)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return maps
        mask = self.suppression_mask(maps)
        return torch.where(mask, maps * self.alpha, maps)


@register_method
class DBGCE(Method):
    """CAM head + diversification block; the recipes train it with the gradient-boosting loss."""

    name = "dbgce"
    paper = ("Sun et al., Fine-grained Recognition: Accounting for Subtle Differences between Similar Classes, "
             "AAAI 2020 (arXiv 1912.06842)")
    code = "none official (reference: mmaaz60/ssl_for_fgvc, third party)"
    backbones = "any timm model with a spatial last feature map (CNNs, Swin, ConvNeXt; ViT patch tokens); ResNet-50 in the paper"

    @dataclass
    class Config:
        p_peak: float = 0.5
        p_patch: float = 0.5
        patch_cells: int = 3  # patch side in feature cells; patches cover the whole map
        alpha: float = 0.1

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        model = cls.probe_backbone(spec)
        if not hasattr(model, "forward_features") or not getattr(model, "num_features", 0):
            raise ConfigError(f"model.backbone: dbgce cannot use {spec.backbone}: no feature map")

    def __init__(self, spec: ModelSpec, cfg: "DBGCE.Config"):
        super().__init__(spec, cfg)
        self.backbone = self.make_backbone()
        self.cam = nn.Conv2d(self.backbone.num_features, spec.num_classes, kernel_size=1, bias=True)
        self.block = DiversificationBlock(cfg.p_peak, cfg.p_patch, cfg.patch_cells, cfg.alpha)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` class activation maps."""
        return self.cam(to_nchw(self.backbone, self.backbone.forward_features(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_maps(images).mean((2, 3))

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        maps = self.class_maps(images)
        logits = self.block(maps).mean((2, 3))
        loss = ctx.criterion(logits, targets)
        return StepOutput(loss=loss, logs={"cls": loss.detach()}, logits=maps.detach().mean((2, 3)))

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        maps = self.class_maps(images)
        logits = maps.mean((2, 3))
        top = logits.topk(min(3, logits.shape[1]), dim=1).indices
        picked = maps.gather(1, top[:, :, None, None].expand(-1, -1, *maps.shape[2:]))
        out = {f"class map, top-{i + 1}": picked[:, i] for i in range(picked.shape[1])}
        fixed = torch.Generator(device=maps.device).manual_seed(0)  # one reproducible draw
        suppressed = self.block.suppression_mask(picked[:, :1], generator=fixed)[:, 0]
        out["suppressed for top-1 (one draw)"] = suppressed.float()
        return Explanation(logits=logits, maps=out)
