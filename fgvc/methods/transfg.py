"""TransFG: a ViT that selects discriminative patches from its own attention.

Paper: He, Chen, Liu, Kortylewski, Yang, Bai, Wang, Yuille. "TransFG: A Transformer Architecture for
Fine-grained Recognition", AAAI 2022. https://arxiv.org/abs/2103.07976
Official code: https://github.com/TACJu/TransFG (models/modeling.py), read at 9336fba.

What fgvc implements (docs/methods.md has the differences):

- Overlapping patches: the patch convolution's stride is ``slide_step`` (12 by default; 16 gives the
  non-overlapping split); the position embedding is resized once, corners aligned, to the new grid.
- Encoder: the first ``L - 1`` pretrained blocks. The last block becomes the part layer, randomly
  initialized as the official code does (its loader never loads ``encoderblock_11``), or copied from the
  pretrained block (``part_layer_init: pretrained``).
- Part Selection Module: the per-head product of the raw softmax attention of layers ``1..L-1`` (no
  identity term), its class-token row, the argmax over patches per head (duplicates kept), the layer
  ``L-1`` outputs gathered at those patches, the part layer on ``[CLS; parts]``, the final LayerNorm, the
  head on CLS. The product's row is computed as a vector chain from recorded queries and keys
  (:mod:`fgvc.methods.rollout`), so the encoder keeps fused attention.
- Loss: the run's classification loss plus the contrastive loss on the normalized CLS feature after the
  final LayerNorm (margin 0.4, divided by ``B^2``).
- Inference: the head's logits on the part layer's CLS token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from ..backbones import create_backbone
from ..errors import ConfigError
from ..losses import contrastive_loss
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .ops import classifier
from .registry import register_method
from .rollout import rollout_row
from .vit import (final_norm, prefix_tokens, record_queries_and_keys, run_blocks, set_mlp_dropout,
                  take_queries_and_keys, vit_problem, vit_rope, vit_set_patch_stride, vit_tokens)


def official_block_init(block: nn.Module) -> None:
    """Re-initializes a transformer block as the official TransFG code creates its part layer: PyTorch's
    default for the attention linears and norms, Xavier-uniform MLP weights with N(0, 1e-6) biases (every linear
    of the MLP: ``fc1`` and ``fc2`` of a ViT's, the gated linears of EVA's)."""
    for m in block.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            m.reset_parameters()
    for fc in (m for m in block.mlp.modules() if isinstance(m, nn.Linear)):
        nn.init.xavier_uniform_(fc.weight)
        if fc.bias is not None:
            nn.init.normal_(fc.bias, std=1e-6)


@register_method
class TransFG(Method):
    """ViT + Part Selection Module + contrastive loss."""

    name = "transfg"
    paper = "He et al., TransFG: A Transformer Architecture for Fine-grained Recognition, AAAI 2022 (arXiv 2103.07976)"
    code = "https://github.com/TACJu/TransFG"
    backbones = ("timm ViTs with a class token (ViT, DeiT, DINOv2 with or without registers, DINOv3, EVA-02, CLIP; "
                 "ViT-B/16 in the paper)")

    @dataclass
    class Config:
        slide_step: int = 12  # patch stride: 12 overlapping (the paper), 16 non-overlapping
        part_select: bool = True  # false: the last layer sees every token (TransFG without its PSM, for ablations)
        part_layer_init: Literal["random", "pretrained"] = "random"
        contrastive_weight: float = 1.0
        contrastive_margin: float = 0.4
        embed_dropout: float = 0.1  # after the position embedding (official: 0.1)
        mlp_dropout: float = 0.1  # inside every MLP (official: 0.1; attention dropout 0)
        rollout_chunk: int = 256  # query rows per chunk of the rollout

    @classmethod
    def check_backbone(cls, spec: ModelSpec) -> None:
        vit = cls.probe_backbone(spec)
        problem = vit_problem(vit) or (None if len(vit.blocks) >= 2 else "it has fewer than 2 blocks")
        if problem:
            raise ConfigError(f"model.backbone: transfg cannot use {spec.backbone}: {problem}")

    def __init__(self, spec: ModelSpec, cfg: "TransFG.Config"):
        super().__init__(spec, cfg)
        # Created at its own default size, so pretrained position embeddings are resized only once, below.
        vit = create_backbone(spec.backbone, pretrained=spec.pretrained, pretrained_file=spec.pretrained_file,
                              drop_path_rate=spec.drop_path_rate, **spec.backbone_args)
        self.grid = vit_set_patch_stride(vit, spec.img_size, cfg.slide_step)
        vit.pos_drop.p = cfg.embed_dropout
        part_layer = vit.blocks[-1]
        vit.blocks = vit.blocks[:-1]
        if cfg.part_layer_init == "random":
            official_block_init(part_layer)
        for blk in [*vit.blocks, part_layer]:
            set_mlp_dropout(blk, cfg.mlp_dropout)
        self.backbone = vit
        self.prefix = prefix_tokens(vit)  # the class token and any register tokens
        self.part_layer = part_layer
        self.part_norm = final_norm(vit)  # the pretrained encoder norm (official commit ff28b58)
        self.head = classifier(vit.embed_dim, spec.num_classes, spec.head_init)
        record_queries_and_keys(vit.blocks)
        self.patch = vit.patch_embed.proj.kernel_size[0]

    def is_pretrained_parameter(self, name: str) -> bool:
        return super().is_pretrained_parameter(name) or (name.startswith("part_layer.") and
                                                self.cfg.part_layer_init == "pretrained")

    # -- the computation ------------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The encoder's output ``z_{L-1}`` ``[B, 1 + N, D]`` and every encoder layer's queries and keys."""
        self.check_input(images)
        rope = vit_rope(self.backbone, self.grid)
        x = run_blocks(self.backbone.blocks, vit_tokens(self.backbone, images), rope)
        qs, ks = take_queries_and_keys(self.backbone.blocks, rope)
        return x, qs, ks

    def rollout(self, qs: list[torch.Tensor], ks: list[torch.Tensor]) -> torch.Tensor:
        """Class-token row of ``A_{L-1} ... A_1`` per head: ``[B, H, 1 + N]``."""
        b, h, n, _ = qs[0].shape
        start = torch.zeros(b, h, n, device=qs[0].device, dtype=torch.promote_types(qs[0].dtype, torch.float32))
        start[..., 0] = 1.0
        scale = self.backbone.blocks[0].attn.scale
        return rollout_row(start, qs, ks, scale, chunk=self.cfg.rollout_chunk)

    def features(self, images: torch.Tensor, select: Optional[bool] = None
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The CLS feature after the part layer and norm, the selected token indices ``[B, H]`` (1-based
        over patches, i.e. token positions) and the rollout rows ``[B, H, 1 + N]``. Without part selection
        (``method.part_select=false``) the part layer sees every token and no rollout is computed."""
        select = self.cfg.part_select if select is None else select
        if not select:
            self.check_input(images)
            rope = vit_rope(self.backbone, self.grid)
            x = run_blocks(self.backbone.blocks, vit_tokens(self.backbone, images), rope)
            take_queries_and_keys(self.backbone.blocks)  # not needed: let go of them
            return self.part_norm(run_blocks([self.part_layer], x, rope))[:, 0], None, None
        x, qs, ks = self.encode(images)
        rows = self.rollout(qs, ks)
        idx = rows[:, :, self.prefix:].argmax(-1) + self.prefix  # per head; duplicates kept, as the official code
        parts = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
        # the part layer sees the prefix tokens (class, registers) and the selected patches, each with its own
        # rotary position where the model has one
        rope = vit_rope(self.backbone, self.grid)
        if rope is not None:
            rope = rope[idx - self.prefix][:, None]  # [B, 1, heads, 2 * dims]: one row per selected patch
        h = run_blocks([self.part_layer], torch.cat([x[:, :self.prefix], parts], 1), rope)
        return self.part_norm(h)[:, 0], idx, rows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)[0])

    def training_step(self, images: torch.Tensor, targets: torch.Tensor, ctx: StepContext) -> StepOutput:
        feat, _, _ = self.features(images)
        logits = self.head(feat)
        cls_loss = ctx.criterion(logits, targets)
        con = contrastive_loss(feat, targets, self.cfg.contrastive_margin)
        loss = cls_loss + self.cfg.contrastive_weight * con
        return StepOutput(loss=loss, logs={"cls": cls_loss.detach(), "contrastive": con.detach()},
                          logits=logits.detach())

    # -- what it localizes ----------------------------------------------------------------------------

    def patch_boxes(self, idx: torch.Tensor) -> torch.Tensor:
        """Pixel boxes ``[..., 4]`` (x0, y0, x1, y1) of token positions (the first patch after the prefix tokens)."""
        patch = idx - self.prefix
        row, col = patch.div(self.grid[1], rounding_mode="floor"), patch % self.grid[1]
        s = self.cfg.slide_step
        return torch.stack([col * s, row * s, col * s + self.patch - 1, row * s + self.patch - 1], -1).float()

    @torch.no_grad()
    def explain(self, images: torch.Tensor) -> Explanation:
        feat, idx, rows = self.features(images, select=True)  # the selection is drawn even when it is off
        if not self.cfg.part_select:
            feat = self.features(images)[0]
        heat = rows[:, :, self.prefix:].mean(1).reshape(-1, *self.grid)
        boxes = self.patch_boxes(idx)
        centres = (boxes[..., :2] + boxes[..., 2:]) / 2
        return Explanation(logits=self.head(feat), maps={"rollout (CLS row, mean of heads)": heat},
                           boxes={"selected patches": boxes}, points={"patch centres": centres})
