"""DB + GCE's faithful details: where the block suppresses, how often, by how much, and never at test time."""

from __future__ import annotations

import pytest
import torch

from fgvc.config import load_config
from fgvc.engine.trainer import train
from fgvc.methods.dbgce import DiversificationBlock
from fgvc.methods import create_model

from conftest import ROOT, tiny_overrides


def test_peak_mask_sits_at_the_argmax():
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 7, 7)
    peak = DiversificationBlock.peak_mask(maps)
    assert (peak.flatten(2).sum(-1) == 1).all()
    assert torch.equal(peak.flatten(2).float().argmax(-1), maps.flatten(2).argmax(-1))


@pytest.mark.parametrize("h,w,g", [(14, 14, 3), (7, 9, 2), (5, 5, 5), (6, 4, 4)])
def test_patches_tile_the_whole_map_without_gap_or_overlap(h, w, g):
    block = DiversificationBlock(patch_cells=g)
    index, rows, cols = block.patch_index(h, w)
    assert index.shape == (h, w) and sorted(index.unique().tolist()) == list(range(rows * cols))
    for p in range(rows * cols):  # every patch is a rectangle of at most g x g cells
        r, c = (index == p).nonzero(as_tuple=True)
        assert (r.max() - r.min() + 1) * (c.max() - c.min() + 1) == len(r) and r.max() - r.min() < g


def test_suppression_rates_match_p_over_seeded_draws():
    block = DiversificationBlock(p_peak=0.5, p_patch=0.3, patch_cells=2)
    torch.manual_seed(1)
    maps = torch.randn(64, 50, 6, 6)
    peak = block.peak_mask(maps)
    index, rows, cols = block.patch_index(6, 6)
    peak_rate, patch_rate = [], []
    for seed in range(20):
        torch.manual_seed(seed)
        m = block.suppression_mask(maps)
        peak_rate.append(m[peak].float().mean())
        # a patch is "on" if any of its non-peak cells is suppressed
        non_peak = m & ~peak
        on = torch.zeros(64, 50, rows * cols).scatter_reduce(2, index.flatten().expand(64, 50, -1),
                                                              non_peak.flatten(2).float(), "amax")
        patch_rate.append(on.mean())
    assert abs(torch.stack(peak_rate).mean() - 0.5) < 0.02
    assert abs(torch.stack(patch_rate).mean() - 0.3) < 0.02


def test_peak_follows_only_the_peak_draw_and_factor_is_alpha():
    torch.manual_seed(3)
    maps = torch.rand(8, 3, 6, 6) + 0.5
    everything = DiversificationBlock(p_peak=0.0, p_patch=1.0, patch_cells=3, alpha=0.1).train()
    out = everything(maps)
    peak = everything.peak_mask(maps)
    assert torch.equal(out[peak], maps[peak])  # all patches suppressed, but the peak stays
    assert torch.allclose(out[~peak], 0.1 * maps[~peak])
    only_peak = DiversificationBlock(p_peak=1.0, p_patch=0.0).train()
    out = only_peak(maps)
    assert torch.allclose(out[peak], 0.1 * maps[peak]) and torch.equal(out[~peak], maps[~peak])


def test_gradient_flows_through_suppressed_cells_scaled_by_alpha():
    maps = torch.rand(2, 3, 4, 4, requires_grad=True)
    block = DiversificationBlock(p_peak=1.0, p_patch=1.0, patch_cells=2, alpha=0.1).train()
    block(maps).sum().backward()
    assert torch.allclose(maps.grad, torch.full_like(maps, 0.1))


def test_nothing_is_suppressed_in_eval_mode():
    torch.manual_seed(0)
    model = create_model("dbgce", backbone="test_resnet", num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.class_maps(x)
        assert torch.equal(model.block(maps), maps)
        assert torch.allclose(model(x), maps.mean((2, 3)))
        # ... which is a linear head on pooled features
        pooled = model.backbone.forward_features(x).mean((2, 3))
        assert torch.allclose(model(x), pooled @ model.cam.weight[:, :, 0, 0].T + model.cam.bias, atol=1e-5)


@pytest.mark.parametrize("method", ["baseline", "transfg", "dbgce"])
def test_gce_trains_with_several_methods(method, tmp_path, synth_root):
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / f"{method}.yaml",
                      tiny_overrides(synth_root, tmp_path / method, **{"train.loss": "gce", "train.gce_k": 2,
                                                                      "train.epochs": 1, "eval.explain_samples": 0,
                                                                      "data.img_size": 64, "data.resize": 72}))
    result = train(cfg, progress=False)
    assert result.test["num_images"] == 16
    import json

    logs = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in logs if x["kind"] == "train")
