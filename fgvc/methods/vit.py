"""The ViT surgery that TransFG and RAMS-Trans share: the patch stride (overlapping patches), the token embedding,
and the queries and keys every block computes.

These edit the internals of timm's plain ``VisionTransformer`` (its patch convolution, position embedding and
attention modules), so they live beside the two methods that need them rather than in the backbone adapter
(:mod:`fgvc.backbones`), which only uses timm's public contract.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..backbones import is_vit


def vit_problem(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot serve the ViT methods, or None when it can.

    They need timm's plain VisionTransformer layout: a convolutional patch embedding, one class token
    (no register or distillation tokens) and blocks with timm's standard ``Attention`` (fused qkv,
    ``q_norm``/``k_norm``), so that queries and keys can be read and the patch stride changed.
    """
    if not is_vit(model):
        return "it is not a ViT with a class token (timm VisionTransformer layout)"
    if getattr(model, "num_prefix_tokens", 1) != 1:
        return "it has register or distillation tokens besides the class token"
    if not isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d):
        return "its patch embedding is not a single convolution"
    for blk in model.blocks:
        attn = getattr(blk, "attn", None)
        if attn is None or not all(hasattr(attn, a) for a in ("qkv", "q_norm", "k_norm", "scale", "num_heads")):
            return "its blocks do not use timm's standard Attention"
    return None


def resample_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Linear resize of a ``[1, h*w, D]`` position grid, corners aligned (``scipy.ndimage.zoom(order=1)``,
    what the official TransFG and RAMS-Trans codes use)."""
    d = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], d).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=new, mode="bilinear", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d).to(pos.dtype)


@torch.no_grad()
def vit_set_patch_stride(vit: nn.Module, img_size: int, stride: int) -> tuple[int, int]:
    """Sets the patch convolution's stride (overlapping patches when ``stride < patch``) and the input size,
    and resizes the position embedding once, from the grid the weights were made for to the new grid.

    Returns:
        The new token grid ``(rows, cols)``: ``(img_size - patch) // stride + 1`` per side.
    """
    pe = vit.patch_embed
    patch = pe.proj.kernel_size[0]
    if img_size < patch:
        raise ValueError(f"input size {img_size} is smaller than the patch size {patch}")
    old = tuple(pe.grid_size)
    new = ((img_size - patch) // stride + 1,) * 2
    pe.proj.stride = (stride, stride)
    pe.img_size = (img_size, img_size)
    pe.grid_size = new
    pe.num_patches = new[0] * new[1]
    if hasattr(pe, "dynamic_img_pad"):
        pe.dynamic_img_pad = False
    prefix = 0 if getattr(vit, "no_embed_class", False) else 1
    pos = vit.pos_embed.data
    resized = torch.cat([pos[:, :prefix], resample_grid(pos[:, prefix:], old, new)], 1)
    vit.pos_embed = nn.Parameter(resized)
    return new


def vit_tokens(vit: nn.Module, images: torch.Tensor, cls_token: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Patch tokens with the class token (``cls_token`` overrides the model's) and position embedding,
    through the model's position dropout and pre-norm: the input of the first block, ``[B, 1 + N, D]``."""
    x = vit.patch_embed(images)
    if x.ndim == 4:  # models built with dynamic_img_size give NHWC patches
        x = x.flatten(1, 2)
    cls = (vit.cls_token if cls_token is None else cls_token).expand(x.shape[0], -1, -1)
    if getattr(vit, "no_embed_class", False):
        x = torch.cat([cls, x + vit.pos_embed], 1)
    else:
        x = torch.cat([cls, x], 1) + vit.pos_embed
    return vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))


def _keep_output(module: nn.Module, args: Any, output: torch.Tensor) -> None:
    module.fgvc_output = output.detach()


def record_queries_and_keys(blocks: Sequence[nn.Module]) -> None:
    """Makes every block keep its last queries and keys (after ``q_norm``/``k_norm``); :func:`take_queries_and_keys`
    reads them after a forward pass.

    The blocks keep their fused attention (SDPA): the attention matrix is never formed. The hooks are
    registered once, at construction, and keep a detached view of tensors the attention holds anyway for its
    backward pass, on the module that computed them (so a deep copy of the model, such as its EMA, records
    into its own modules); ``torch.compile`` traces them without recompiling per step.
    """
    for blk in blocks:
        for m in (blk.attn.q_norm, blk.attn.k_norm):
            if not getattr(m, "fgvc_recording", False):
                m.register_forward_hook(_keep_output)
                m.fgvc_recording = True


def take_queries_and_keys(blocks: Sequence[nn.Module]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every block's last queries and keys ``[B, heads, tokens, head_dim]``, in forward order; the modules let
    go of them (so a model at rest holds no activations)."""
    qs, ks = [], []
    for blk in blocks:
        qs.append(blk.attn.q_norm.fgvc_output)
        ks.append(blk.attn.k_norm.fgvc_output)
        blk.attn.q_norm.fgvc_output = blk.attn.k_norm.fgvc_output = None
    return qs, ks
