"""RAMS-Trans's faithful details: the DPPM rollout, thresholding, 8-connected components, boxes, crops,
scale-specific class tokens and the inference rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext
from fgvc.methods.ops import largest_component, mask_box
from fgvc.methods.rams_trans import map_box, paste_map
from fgvc.methods import create_model


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("rams_trans", backbone="test_vit", num_classes=5, img_size=64, **kw)


def ctx():
    return StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"))


@pytest.mark.parametrize("row", ["cls", "mean"])
def test_dppm_map_equals_the_full_product_of_regularized_attention(row):
    model = tiny(dppm_row=row).double().eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        _, qs, ks = model.scale_pass(images, 0)
        got = model.attention_map(qs, ks)
        # Independent: explicit head-mean attention of all L layers, (A + I) row-normalized, G = A_L ... A_1
        vit = model.backbone
        x = vit.patch_embed(images).flatten(1, 2)
        x = torch.cat([model.cls_tokens[:, :1].expand(2, -1, -1), x], 1) + vit.pos_embed
        g = None
        for blk in vit.blocks:
            a = blk.attn
            b, n, _ = x.shape
            qkv = a.qkv(blk.norm1(x)).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
            att = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) * a.scale, -1).mean(1)
            att = att + torch.eye(n, dtype=att.dtype)
            att = att / att.sum(-1, keepdim=True)
            g = att if g is None else att @ g
            x = blk(x)
        vec = g[:, 0, 1:] if row == "cls" else g.mean(1)[:, 1:]
        vec = vec / vec.max(1, keepdim=True).values
    assert torch.allclose(got, vec.reshape(2, 4, 4), rtol=1e-10, atol=1e-12)


def test_proposal_box_on_a_hand_built_map():
    model = tiny()  # 64 px, patch 16: a 4 x 4 grid
    scores = torch.full((1, 4, 4), 0.1)
    scores[0, 1:3, 2:4] = 1.0  # a 2 x 2 blob at rows 1-2, columns 2-3
    scores[0, 0, 0] = 0.9  # a single cell elsewhere: above threshold but a smaller component
    box = model.propose(scores)
    assert box.tolist() == [[32.0, 16.0, 63.0, 47.0]]


def test_diagonal_neighbours_join_one_component():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    for i in range(4):
        mask[0, i, i] = True  # a diagonal line of 4 cells: one component under 8-connectivity
    mask[0, 0, 4:6] = True  # a horizontal pair: 2 cells
    comp = largest_component(mask)
    assert comp.sum() == 4 and comp[0, 3, 3] and not comp[0, 0, 4]
    assert mask_box(comp).tolist() == [[0, 0, 3, 3]]


@pytest.mark.parametrize("seed", range(6))
def test_largest_component_matches_scipy_including_ties(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((8, 9, 11)) < 0.35
    got = largest_component(torch.from_numpy(masks))
    for m, g in zip(masks, got.numpy()):
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        if n == 0:
            assert not g.any()
            continue
        sizes = ndimage.sum(m, labels, range(1, n + 1))
        best = int(np.argmax(sizes)) + 1  # the first of the largest, in raster order (as regionprops + max)
        assert (g == (labels == best)).all()


def test_empty_mask_proposes_the_whole_image():
    model = tiny()
    box = model.propose(torch.ones(2, 4, 4))  # uniform attention: nothing exceeds 1.3 x the mean
    assert box.tolist() == [[0.0, 0.0, 63.0, 63.0]] * 2


def test_two_class_tokens_are_distinct_and_both_learn():
    model = tiny().train()
    assert model.cls_tokens.shape == (1, 2, model.backbone.embed_dim)
    assert model.backbone.cls_token is None
    out = model.training_step(torch.randn(2, 3, 64, 64), torch.tensor([1, 2]), ctx())
    out.loss.backward()
    g = model.cls_tokens.grad
    assert g[:, 0].abs().sum() > 0 and g[:, 1].abs().sum() > 0
    assert torch.isclose(out.loss, out.logs["cls_scale1"] + out.logs["cls_scale2"])


def test_inference_ignores_scale_two_unless_asked():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.cls_tokens[:, 1] += 5.0
        assert torch.equal(model(x), before)
        model.cfg.inference = "mean"
        assert not torch.allclose(model(x), before)


def test_second_scale_sees_the_crop_of_the_first_scales_box():
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    seen = []
    real = model.scale_pass
    model.scale_pass = lambda images, s: (seen.append(images), real(images, s))[1]
    with torch.no_grad():
        _, qs, ks = real(x, 0)
        box = model.propose(model.attention_map(qs, ks))
        model.run_scales(x, 2)
    from fgvc.methods.ops import crop_and_zoom

    assert torch.allclose(seen[1], crop_and_zoom(x, box, align_corners=True))


def test_boxes_and_maps_map_back_to_the_original_image():
    extent = torch.tensor([[10.0, 20.0, 40.0, 50.0]])
    # a crop showing pixels 10..40 zoomed to 64 px: its corners map back to the extent's corners
    assert torch.allclose(map_box(torch.tensor([[0.0, 0.0, 63.0, 63.0]]), extent, (64, 64)), extent)
    canvas = paste_map(torch.ones(1, 4, 4), extent, (64, 64))
    assert canvas[0, 20:51, 10:41].min() > 0.99 and canvas[0, :19].abs().max() == 0
    e = tiny().eval().explain(torch.randn(2, 3, 64, 64))
    assert set(e.maps) == {"attention, scale 1", "attention, scale 2"}
    assert e.maps["attention, scale 1"].shape == (2, 64, 64)
