"""RAMS-Trans: a recurrent, multi-scale ViT that zooms into the region its own attention points at.

Paper: Hu, Jin, Zhang, Wang, Chen, Xu. "RAMS-Trans: Recurrent Attention Multi-scale Transformer for
Fine-grained Image Recognition", ACM MM 2021. https://arxiv.org/abs/2107.08192
Released code: https://github.com/hyqyoung/RAMS-Trans (a single commit, c414ea9; it does not run as
published and differs from the paper). fgvc implements the paper; docs/methods.md lists the differences.

- Scales share the patch embedding, the encoder and the head; only the class token is scale-specific
  (one learned token per scale, each initialized from the pretrained one).
- Dynamic Patch Proposal Module, per image, without gradient: the head-averaged attention of every layer,
  regularized as ``0.5 A + 0.5 I``, multiplied over all layers; the class token's row over the patches
  (option: the mean row, as the released code), divided by its maximum; the patches above ``alpha`` (1.3)
  times its mean; the largest 8-connected component; its box in pixels; a bilinear crop of the scale's
  input resized back to the input size (``align_corners=True``, as the released code) is the next scale.
- Loss: ``CE(scale 1) + lambda * sum CE(scale s > 1)``, lambda = 1. Inference: scale 1 only (option: the
  mean of all scales' probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..backbones import create_backbone
from ..errors import ConfigError
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .ops import classifier, crop_and_zoom, largest_component, log_mean_softmax, mask_box
from .registry import register_method
from .rollout import rollout_row
from .vit import (final_norm, prefix_tokens, record_queries_and_keys, run_blocks, set_mlp_dropout,
                  take_queries_and_keys, vit_problem, vit_rope, vit_set_patch_stride, vit_tokens)


@register_method
class RAMSTrans(Method):
    """Multi-scale ViT with scale-specific class tokens and the Dynamic Patch Proposal Module."""

    name = "rams_trans"
    paper = "Hu et al., RAMS-Trans: Recurrent Attention Multi-scale Transformer, ACM MM 2021 (arXiv 2107.08192)"
    code = "https://github.com/hyqyoung/RAMS-Trans (released, incomplete; fgvc follows the paper)"
    backbones = ("timm ViTs with a class token (ViT, DeiT, DINOv2 with or without registers, DINOv3, EVA-02, CLIP; "
                 "ViT-B/16 at 448 in the paper)")

    @dataclass
    class Config:
        scales: int = 2
        scale_weight: float = 1.0  # lambda: weight of the CE of every scale after the first
        alpha: float = 1.3  # threshold = alpha * mean of the normalized rollout (the released code: 1.2)
        dppm_row: Literal["cls", "mean"] = "cls"  # cls: the paper; mean: the released code's mean of all rows
        inference: Literal["first", "mean"] = "first"  # first: scale 1 only (the paper)
        embed_dropout: float = 0.1
        mlp_dropout: float = 0.1
        rollout_chunk: int = 256

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        problem = vit_problem(cls.probe_backbone(spec))
        if problem:
            raise ConfigError(f"model.backbone: rams_trans cannot use {spec.backbone}: {problem}")

    def __init__(self, spec: ModelSpec, cfg: "RAMSTrans.Config"):
        super().__init__(spec, cfg)
        if cfg.scales < 1:
            raise ConfigError("method.scales must be at least 1")
        vit = create_backbone(spec.backbone, pretrained=spec.pretrained, pretrained_file=spec.pretrained_file,
                              drop_path_rate=spec.drop_path_rate, **spec.backbone_args)
        self.patch = vit.patch_embed.proj.kernel_size[0]
        self.grid = vit_set_patch_stride(vit, spec.img_size, self.patch)  # non-overlapping, resized once
        vit.pos_drop.p = cfg.embed_dropout
        for blk in vit.blocks:
            set_mlp_dropout(blk, cfg.mlp_dropout)
        self.prefix = prefix_tokens(vit)  # the class token and any register tokens
        self.cls_tokens = nn.Parameter(vit.cls_token.detach().repeat(1, cfg.scales, 1))
        vit.cls_token = None  # replaced by the scale-specific tokens
        self.backbone = vit
        self.head = classifier(vit.embed_dim, spec.num_classes, spec.head_init)
        record_queries_and_keys(vit.blocks)

    def is_pretrained_parameter(self, name: str) -> bool:
        return super().is_pretrained_parameter(name) or name == "cls_tokens"

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"cls_tokens"}

    # -- one scale ------------------------------------------------------------------------------------

    def scale_pass(self, images: torch.Tensor, scale: int) -> tuple[torch.Tensor, list, list]:
        """Logits of one scale, and its queries and keys per layer."""
        vit = self.backbone
        self.check_input(images)
        rope = vit_rope(vit, self.grid)
        x = run_blocks(vit.blocks, vit_tokens(vit, images, cls_token=self.cls_tokens[:, scale:scale + 1]), rope)
        qs, ks = take_queries_and_keys(vit.blocks, rope)
        return self.head(final_norm(vit)(x)[:, 0]), qs, ks

    def attention_map(self, qs: list, ks: list) -> torch.Tensor:
        """The DPPM's patch scores ``[B, rows, cols]``, divided by their maximum."""
        q = qs[0]
        b, _, n, _ = q.shape
        dtype = torch.promote_types(q.dtype, torch.float32)
        if self.cfg.dppm_row == "cls":
            start = torch.zeros(b, n, device=q.device, dtype=dtype)
            start[:, 0] = 1.0
        else:
            start = torch.full((b, n), 1.0 / n, device=q.device, dtype=dtype)
        row = rollout_row(start, qs, ks, self.backbone.blocks[0].attn.scale, head_mean=True, identity=0.5,
                          chunk=self.cfg.rollout_chunk)
        g = row[:, self.prefix:]  # the patches (after the class and register tokens)
        g = g / g.max(1, keepdim=True).values.clamp_min(torch.finfo(g.dtype).tiny)
        return g.reshape(b, *self.grid)

    def propose(self, scores: torch.Tensor) -> torch.Tensor:
        """Pixel boxes ``[B, 4]`` (x0, y0, x1, y1, inclusive) of the largest component above threshold."""
        mask = scores > self.cfg.alpha * scores.mean((1, 2), keepdim=True)
        cells = mask_box(largest_component(mask))
        p = self.patch  # non-overlapping: stride = patch
        return torch.stack([cells[:, 0] * p, cells[:, 1] * p, (cells[:, 2] + 1) * p - 1, (cells[:, 3] + 1) * p - 1],
                           1).float()

    def run_scales(self, images: torch.Tensor, scales: int, explain: bool = False):
        """Logits of every scale; with ``explain`` also each scale's map and proposal in original pixels.

        Returns:
            ``(logits, maps, boxes)``: per scale, the logits; per proposing scale, its attention map pasted
            over the region of the original image it saw (``[B, H, W]``) and its box in original pixels.
        """
        logits, maps, boxes = [], [], []
        x = images
        h, w = images.shape[-2:]
        extent = images.new_tensor([0.0, 0.0, w - 1.0, h - 1.0]).expand(len(images), 4)  # what x shows
        for s in range(scales):
            need_map = s + 1 < scales or explain
            out, qs, ks = self.scale_pass(x, s)
            logits.append(out)
            if not need_map:
                break
            scores = self.attention_map(qs, ks)
            box = self.propose(scores)
            if explain:
                maps.append(paste_map(scores, extent, (h, w)))
                extent = map_box(box, extent, (h, w))
                boxes.append(extent)
            if s + 1 < scales:
                x = crop_and_zoom(x.detach(), box, align_corners=True)
        return logits, maps, boxes

    # -- the three faces -----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.inference == "first" or self.cfg.scales == 1:
            return self.scale_pass(images, 0)[0]
        logits, _, _ = self.run_scales(images, self.cfg.scales)
        return log_mean_softmax(logits)

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        logits, _, _ = self.run_scales(images, self.cfg.scales)
        losses = [ctx.criterion(l, targets) for l in logits]
        loss = losses[0] + self.cfg.scale_weight * sum(losses[1:], torch.zeros_like(losses[0]))
        logs = {f"cls_scale{i + 1}": l.detach() for i, l in enumerate(losses)}
        return StepOutput(loss=loss, logs=logs, logits=logits[0].detach())

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        logits, maps, boxes = self.run_scales(images, self.cfg.scales, explain=True)
        return Explanation(logits=self.forward(images),
                           maps={f"attention, scale {i + 1}": m for i, m in enumerate(maps)},
                           boxes={f"proposal from scale {i + 1}": b for i, b in enumerate(boxes)})


def map_box(box: torch.Tensor, extent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A box in the pixels of a crop-zoomed input (``align_corners`` sampling of ``extent``) in original pixels."""
    h, w = size
    ox0, oy0, ox1, oy1 = extent.unbind(1)
    fx, fy = (ox1 - ox0) / (w - 1), (oy1 - oy0) / (h - 1)
    return torch.stack([ox0 + box[:, 0] * fx, oy0 + box[:, 1] * fy, ox0 + box[:, 2] * fx, oy0 + box[:, 3] * fy], 1)


def paste_map(scores: torch.Tensor, extent: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Draws ``[B, h, w]`` maps stretched over the ``extent`` boxes of ``[B, H, W]`` canvases (zero elsewhere)."""
    h, w = size
    ys = torch.arange(h, device=scores.device, dtype=torch.float32)
    xs = torch.arange(w, device=scores.device, dtype=torch.float32)
    x0, y0, x1, y1 = (v[:, None] for v in extent.float().unbind(1))
    gx = (xs[None] - x0) / (x1 - x0).clamp_min(1e-6) * 2 - 1  # [B, W]
    gy = (ys[None] - y0) / (y1 - y0).clamp_min(1e-6) * 2 - 1  # [B, H]
    grid = torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], -1)
    inside = (grid.abs() <= 1).all(-1)
    pasted = torch.nn.functional.grid_sample(scores[:, None].float(), grid, mode="bilinear", padding_mode="border",
                                             align_corners=True)[:, 0]
    return pasted * inside
