"""The ViT surgery that TransFG and RAMS-Trans share: the patch stride (overlapping patches), the token embedding,
the blocks' run, and the queries and keys every block computes.

These edit the internals of timm's ViTs, so they live beside the two methods that need them rather than in the
backbone adapter (:mod:`fgvc.backbones`), which only uses timm's public contract. Two layouts are served:

- timm's ``VisionTransformer`` (ViT, DeiT, DINOv2 with and without register tokens, CLIP): a class token, register
  tokens after it, absolute position embeddings (on the patches only where ``no_embed_class``);
- timm's ``Eva`` (EVA-02, DINOv3): the same tokens, absolute position embeddings or none, and rotary position
  embeddings (RoPE) that every block applies to the queries and keys of the patch tokens.

The prefix tokens (class and registers) come first; the methods pick and crop among the patch tokens after them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..backbones import is_vit


def vit_problem(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot serve the ViT methods, or None when it can.

    They need a ViT with a class token (register tokens may follow it), a convolutional patch embedding, and blocks
    whose attention exposes ``q_norm``/``k_norm`` (timm's ``Attention`` and ``EvaAttention``), so that queries and
    keys can be read and the patch stride changed.
    """
    if not is_vit(model):
        return "it is not a ViT with a class token (timm VisionTransformer or Eva layout)"
    if getattr(model, "dist_token", None) is not None:
        return "it has a distillation token"
    registers = getattr(model, "reg_token", None)
    if model.num_prefix_tokens != 1 + (registers.shape[1] if registers is not None else 0):
        return "it has prefix tokens besides its class and register tokens"
    if not isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d):
        return "its patch embedding is not a single convolution"
    for blk in model.blocks:
        attn = getattr(blk, "attn", None)
        if attn is None or not all(hasattr(attn, a) for a in ("q_norm", "k_norm", "scale", "num_heads")):
            return "its blocks do not use timm's standard attention (queries and keys behind q_norm and k_norm)"
    return None


def prefix_tokens(vit: nn.Module) -> int:
    """The class and register tokens before the patch tokens."""
    return int(vit.num_prefix_tokens)


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
    resizes the absolute position embedding once, from the grid the weights were made for to the new grid, and
    sets the rotary embedding's grid (where the model has one).

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
    if getattr(vit, "pos_embed", None) is not None:
        prefix = 0 if getattr(vit, "no_embed_class", False) else prefix_tokens(vit)
        pos = vit.pos_embed.data
        resized = torch.cat([pos[:, :prefix], resample_grid(pos[:, prefix:], old, new)], 1)
        vit.pos_embed = nn.Parameter(resized)
    rope = getattr(vit, "rope", None)
    if rope is not None and getattr(rope, "feat_shape", None) is not None and list(rope.feat_shape) != list(new):
        rope.update_feat_shape(list(new))
    return new


def vit_tokens(vit: nn.Module, images: torch.Tensor, cls_token: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Patch tokens after the class token (``cls_token`` overrides the model's) and the register tokens, with the
    absolute position embedding where the model has one, through its position dropout and pre-norm: the input
    of the first block, ``[B, prefix + N, D]`` (timm's own embedding of the tokens, spelled out so that the class
    token can be another)."""
    x = vit.patch_embed(images)
    if x.ndim == 4:  # models built with dynamic_img_size give NHWC patches
        x = x.flatten(1, 2)
    prefix = [(vit.cls_token if cls_token is None else cls_token).expand(x.shape[0], -1, -1)]
    if getattr(vit, "reg_token", None) is not None:
        prefix.append(vit.reg_token.expand(x.shape[0], -1, -1))
    pos = getattr(vit, "pos_embed", None)
    if pos is None:
        x = torch.cat(prefix + [x], 1)
    elif getattr(vit, "no_embed_class", False):
        x = torch.cat(prefix + [x + pos], 1)
    else:
        x = torch.cat(prefix + [x], 1) + pos
    x = vit.pos_drop(x)
    if getattr(vit, "patch_drop", None) is not None:
        x = vit.patch_drop(x)
    return vit.norm_pre(x)


def vit_rope(vit: nn.Module, grid: Sequence[int]) -> Optional[torch.Tensor]:
    """The rotary position embedding of the patch tokens (``[N, 2 * dims]``, sines then cosines), None for a model
    without one; as timm's Eva asks its rotary module for it."""
    rope = getattr(vit, "rope", None)
    if rope is None:
        return None
    return rope.get_embed() if getattr(rope, "feat_shape", None) is not None else rope.get_embed(shape=list(grid))


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, rope: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The tokens through ``blocks`` in order (an Eva block takes the rotary embedding as its ``rope``)."""
    for blk in blocks:
        x = blk(x) if rope is None else blk(x, rope=rope)
    return x


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


def take_queries_and_keys(blocks: Sequence[nn.Module], rope: Optional[torch.Tensor] = None
                          ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every block's last queries and keys ``[B, heads, tokens, head_dim]`` as its attention used them (with the
    rotary embedding applied to the patch tokens' where the blocks had one), in forward order; the modules let go
    of them (so a model at rest holds no activations)."""
    qs, ks = [], []
    for blk in blocks:
        attn = blk.attn
        q, k = attn.q_norm.fgvc_output, attn.k_norm.fgvc_output
        attn.q_norm.fgvc_output = attn.k_norm.fgvc_output = None
        if rope is not None:
            q, k = rotate(q, rope, attn), rotate(k, rope, attn)
        qs.append(q)
        ks.append(k)
    return qs, ks


def rotate(t: torch.Tensor, rope: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """The rotary embedding applied to the patch tokens of queries or keys, as timm's ``EvaAttention`` applies it
    (its prefix tokens unrotated, its ``rotate_half`` layout)."""
    from timm.layers import apply_rot_embed_cat

    npt = int(getattr(attn, "num_prefix_tokens", 0))
    half = bool(getattr(attn, "rotate_half", False))
    return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, half=half)], 2).type_as(t)


def final_norm(vit: nn.Module) -> nn.Module:
    """The model's last norm of the tokens: ``norm``, or ``fc_norm`` where ``norm`` is an identity (EVA-02, whose
    norm comes after its pooling)."""
    if isinstance(vit.norm, nn.Identity) and isinstance(getattr(vit, "fc_norm", None), nn.Module):
        return vit.fc_norm
    return vit.norm


def set_mlp_dropout(block: nn.Module, p: float) -> None:
    """Every dropout inside a block's MLP (``Mlp``'s two, ``GluMlp``'s and ``SwiGLU``'s one) to ``p``."""
    for m in block.mlp.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
