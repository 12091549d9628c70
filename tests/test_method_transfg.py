"""TransFG's faithful details: the rollout and part selection against the official algorithm, the
contrastive loss, overlapping patches, and loading the Google ViT-B_16.npz layout."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from scipy.ndimage import zoom

from fgvc.errors import ConfigError
from fgvc.losses import contrastive_loss
from fgvc.methods import create_model

from fakes import write_google_vit_npz


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("transfg", backbone="test_vit", num_classes=5, img_size=kw.pop("img_size", 64), **kw)


def official_part_selection(model, images):
    """An independent re-implementation of the official PSM: explicit per-layer softmax attention of every
    encoder layer, the full matrix product (later layers from the left), CLS row, per-head argmax."""
    vit = model.backbone
    x = vit.patch_embed(images).flatten(1, 2)
    x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], 1) + vit.pos_embed
    maps = []
    for blk in vit.blocks:
        a = blk.attn
        b, n, _ = x.shape
        qkv = a.qkv(blk.norm1(x)).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        maps.append(torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) * a.scale, dim=-1))
        x = blk(x)
    last = maps[0]
    for m in maps[1:]:
        last = m @ last
    row = last[:, :, 0]
    return row[:, :, 1:].argmax(-1) + 1, row


@pytest.mark.parametrize("chunk", [256, 7])
def test_rollout_and_selection_equal_the_full_matrix_product(chunk):
    model = tiny(rollout_chunk=chunk).double().eval()
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        _, idx, rows = model.features(images)
        ref_idx, ref_row = official_part_selection(model, images)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(rows, ref_row, rtol=1e-10, atol=1e-12)
    assert idx.shape == (3, model.backbone.blocks[0].attn.num_heads)


def test_selection_gathers_the_encoder_outputs_and_carries_no_gradient():
    model = tiny().eval()
    images = torch.randn(2, 3, 64, 64, requires_grad=True)
    x, qs, ks = model.encode(images)
    rows = model.rollout(qs, ks)
    assert not rows.requires_grad and not qs[0].requires_grad
    feat, idx, _ = model.features(images)
    assert idx.dtype == torch.long and feat.requires_grad
    # The part layer sees exactly [CLS; z_{L-1} at the selected tokens]
    seen = []
    handle = model.part_layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model.features(images)
    handle.remove()
    expected = torch.cat([x[:, :1], x[torch.arange(2)[:, None], idx]], 1)
    assert torch.allclose(seen[0], expected)


def test_overlapping_patch_grid_and_official_position_resize(tmp_path):
    ref = timm.create_model("test_vit", pretrained=False, num_classes=0)  # 160 px: a 10 x 10 grid
    w = write_google_vit_npz(tmp_path / "ViT-B_16.npz", ref, grid=10)
    for stride, grid in ((12, 37), (16, 28)):
        m = create_model("transfg", backbone="test_vit", num_classes=5, img_size=448, slide_step=stride,
                         pretrained_file=str(tmp_path / "ViT-B_16.npz"))
        assert m.grid == (grid, grid) and m.backbone.pos_embed.shape[1] == 1 + grid * grid
    # Position embedding as the official loader makes it: scipy.ndimage.zoom, order 1, 10 -> 37.
    m = create_model("transfg", backbone="test_vit", num_classes=5, img_size=448,
                     pretrained_file=str(tmp_path / "ViT-B_16.npz"))
    pe = w["Transformer/posembed_input/pos_embedding"]
    d = pe.shape[-1]
    zoomed = zoom(pe[0, 1:].reshape(10, 10, d), (37 / 10, 37 / 10, 1), order=1).reshape(1, -1, d)
    got = m.backbone.pos_embed.detach().numpy()
    assert np.allclose(got[:, 1:], zoomed, atol=1e-6) and np.allclose(got[:, :1], pe[:, :1])


def test_npz_loads_l_minus_1_blocks_and_the_encoder_norm(tmp_path):
    ref = timm.create_model("test_vit", pretrained=False, num_classes=0)
    w = write_google_vit_npz(tmp_path / "ViT-B_16.npz", ref, grid=10)
    last = len(ref.blocks) - 1
    key = f"Transformer/encoderblock_{last}/MlpBlock_3/Dense_0/kernel"
    for init, loaded in (("random", False), ("pretrained", True)):
        torch.manual_seed(0)
        m = create_model("transfg", backbone="test_vit", num_classes=5, img_size=64, part_layer_init=init,
                         pretrained_file=str(tmp_path / "ViT-B_16.npz"))
        assert len(m.backbone.blocks) == last
        first = torch.from_numpy(w["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]).T
        assert torch.allclose(m.backbone.blocks[0].mlp.fc1.weight, first)
        part = torch.allclose(m.part_layer.mlp.fc1.weight, torch.from_numpy(w[key]).T)
        assert part == loaded
        assert torch.allclose(m.part_norm.weight, torch.from_numpy(w["Transformer/encoder_norm/scale"]))
    assert m.is_pretrained_parameter("part_layer.mlp.fc1.weight")
    assert not tiny().is_pretrained_parameter("part_layer.mlp.fc1.weight")  # random part layer: new LR group


def test_contrastive_loss_hand_cases():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    # S: cos(0,1)=0, cos(0,2)=1, cos(1,2)=0. Same-class pairs (0,1),(1,0): 1 - 0 each; diagonals add 0.
    # Different-class pairs (0,2),(2,0): max(1 - 0.4, 0) each; (1,2),(2,1): max(0 - 0.4, 0) = 0.
    expected = (2 * 1.0 + 2 * 0.6) / 9
    assert torch.isclose(contrastive_loss(z, y, 0.4), torch.tensor(expected))
    assert contrastive_loss(torch.eye(3), torch.arange(3), 0.4) == 0  # orthogonal different classes


def test_training_step_adds_the_contrastive_term():
    model = tiny().train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 0, 1, 2])
    from fgvc.losses import build_criterion
    from fgvc.methods.base import StepContext

    ctx = StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"))
    out = model.training_step(x, y, ctx)
    assert torch.isclose(out.loss, out.logs["cls"] + out.logs["contrastive"])


def test_refuses_a_cnn_backbone():
    with pytest.raises(ConfigError, match="transfg cannot use test_resnet"):
        create_model("transfg", backbone="test_resnet", num_classes=5, img_size=64)


def test_explain_boxes_are_the_selected_patches():
    model = tiny().eval()
    e = model.explain(torch.randn(2, 3, 64, 64))
    boxes = e.boxes["selected patches"]
    assert boxes.shape == (2, 2, 4)
    assert (boxes[..., 2] - boxes[..., 0] == 15).all() and (boxes[..., 2] < 64).all()
    assert e.maps["rollout (CLS row, mean of heads)"].shape == (2, 5, 5)


def test_the_rollout_under_bf16_autocast_runs_in_float32_and_stays_close():
    """On a GPU the step runs under bf16 autocast: the rollout keeps its softmax and row product in float32
    (no autocast casts of the [B, H, chunk, N] blocks) and stays close to the float64 product."""
    from fgvc.methods.rollout import rollout_row

    torch.manual_seed(0)
    qs = [torch.randn(2, 3, 40, 16) for _ in range(4)]
    ks = [torch.randn(2, 3, 40, 16) for _ in range(4)]
    start = torch.zeros(2, 3, 40)
    start[..., 0] = 1
    ref = rollout_row(start.double(), [q.double() for q in qs], [k.double() for k in ks], 0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = rollout_row(start, [q.bfloat16() for q in qs], [k.bfloat16() for k in ks], 0.25, chunk=16)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, atol=0.02)
    assert (got[..., 1:].argmax(-1) == ref[..., 1:].argmax(-1)).float().mean() >= 0.8
