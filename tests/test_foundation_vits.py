"""The ViT methods on the foundation backbones a 2026 user starts from (random weights, tiny sizes): DINOv2 with
register tokens, EVA-02 (rotary position embeddings, no patch dropout), DINOv3 (registers and rotary embeddings,
no absolute ones) and a CLIP ViT (a pre-norm).

fgvc spells out timm's token path (so that RAMS-Trans can put in its own class token) and reads each block's
queries and keys for the attention rollout; both must be what timm's own forward computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fgvc
from fgvc.backbones import create_backbone
from fgvc.methods.base import StepContext
from fgvc.methods.vit import (record_queries_and_keys, run_blocks, take_queries_and_keys, vit_problem, vit_rope,
                              vit_set_patch_stride, vit_tokens)

SIZE = 64
# two blocks each: the architecture of the family, in seconds on a CPU
SMALL = {"depth": 2}
FOUNDATION = ["vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224", "vit_small_patch16_dinov3",
              "vit_base_patch16_clip_224"]


def small_vit(name: str):
    torch.manual_seed(0)
    vit = create_backbone(name, img_size=SIZE, **SMALL).eval()
    patch = vit.patch_embed.proj.kernel_size[0]
    grid = vit_set_patch_stride(vit, SIZE, patch)  # the backbone's own grid: the path must equal timm's
    return vit, grid


@pytest.mark.parametrize("name", FOUNDATION)
def test_the_token_path_and_the_queries_and_keys_are_timms(name, monkeypatch):
    vit, grid = small_vit(name)
    assert vit_problem(vit) is None
    x = torch.randn(2, 3, SIZE, SIZE)
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):  # what the attention itself used
        seen.append((q.detach().clone(), k.detach().clone()))
        return real_sdpa(q, k, v, *args, **kwargs)

    record_queries_and_keys(vit.blocks)
    with torch.no_grad():
        expected = vit.forward_features(x)
        monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
        rope = vit_rope(vit, grid)
        ours = run_blocks(vit.blocks, vit_tokens(vit, x), rope)
        qs, ks = take_queries_and_keys(vit.blocks, rope)
    assert torch.allclose(vit.norm(ours), expected, atol=1e-5), name
    assert len(seen) == len(qs) == len(vit.blocks)
    for (q_used, k_used), q, k in zip(seen, qs, ks):
        assert torch.allclose(q, q_used, atol=1e-5) and torch.allclose(k, k_used, atol=1e-5), name


@pytest.mark.parametrize("method", ["transfg", "rams_trans"])
@pytest.mark.parametrize("name", FOUNDATION)
def test_every_vit_method_builds_trains_explains_and_exports(method, name):
    torch.manual_seed(0)
    model = fgvc.create_model(method, backbone=name, num_classes=3, img_size=SIZE, backbone_args=SMALL)
    x, y = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 2])
    model.train()
    out = model.training_step(x, y, StepContext(0, 0, 10, 1, F.cross_entropy))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        explained = model.explain(x)
        logits = model(x)
    assert explained.logits.shape == (2, 3) and explained.maps
    for heat in explained.maps.values():
        assert heat.shape[0] == 2 and torch.isfinite(heat).all()
    program = torch.export.export(model, (x,))
    assert torch.allclose(program.module()(x), logits, atol=1e-5)


def test_the_checks_own_backbones_build_at_their_default_size():
    """What the issue names: TransFG and RAMS-Trans on timm's DINOv2 with registers, EVA-02 and CLIP ViTs."""
    for name in ("vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224", "vit_base_patch16_clip_224"):
        for method in ("transfg", "rams_trans"):
            model = fgvc.create_model(method, backbone=name, num_classes=5, img_size=224)
            assert model.prefix == (5 if "reg4" in name else 1)


def test_a_distilled_vit_is_refused_in_one_line():
    from fgvc.errors import ConfigError

    with pytest.raises(ConfigError, match="transfg cannot use deit_tiny_distilled_patch16_224: it has a distillation"):
        fgvc.create_model("transfg", backbone="deit_tiny_distilled_patch16_224", num_classes=3, img_size=SIZE)
