"""HERBS and PIM: the selector, the combiner, each loss term, the temperature schedule, the inference rule,
and both backbone families (CNN and Swin)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fgvc.cli import main
from fgvc.config import load_config
from fgvc.engine import checkpoint as ckpt
from fgvc.engine.trainer import train
from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext
from fgvc.methods.herbs import GCNCombiner, background_loss, refinement_loss, select_count
from fgvc.methods import create_model

from conftest import ROOT, tiny_overrides

SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2)


def tiny(method="herbs", backbone="test_resnet", **kw):
    torch.manual_seed(0)
    args = SWIN if backbone.startswith("swin") else {}
    return create_model(method, backbone=backbone, num_classes=5, img_size=64, backbone_args=args, fpn_size=16, **kw)


def ctx():
    return StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"))


def test_herbs_ranks_by_the_predicted_class_and_pim_by_max_confidence():
    herbs, pim = tiny("herbs"), tiny("pim")
    logits = torch.zeros(1, 4, 3)
    logits[0, :, 1] = torch.tensor([0.0, 3.0, 1.0, 2.0])  # class 1 wins on average
    logits[0, 0, 2] = 4.0  # token 0 is very sure of class 2, which is not the image's class
    assert herbs.rank(logits)[0].tolist() == [1, 3, 2, 0]
    assert pim.rank(logits)[0].tolist()[0] == 0  # max-class confidence puts token 0 first


@pytest.mark.parametrize("backbone", ["test_resnet", "swin_tiny_patch4_window7_224"])
def test_selection_counts_and_no_gradient_through_the_ranking(backbone):
    model = tiny("herbs", backbone).train()
    out = model.outputs(torch.randn(2, 3, 64, 64))
    for n, (h, w), sel, drop, order in zip(model.selects, model.shapes, out["sel_features"], out["sel_dropped"],
                                           out["sel_order"]):
        assert sel.shape[:2] == (2, n) and drop.shape[1] == h * w - n and not order.requires_grad
        assert sorted(order[0].tolist()) == list(range(h * w))
    assert out["sel_features"][0].requires_grad  # gradient reaches the gathered features, not the order
    assert model.combiner.pool.in_features == sum(model.selects)


def test_select_count_scales_with_the_token_count():
    assert select_count(256, 2304, 2304) == 256 and select_count(256, 2304, 9216) == 256
    assert select_count(256, 2304, 576) == 64  # a quarter of the tokens: a quarter of the selection
    assert select_count(32, 144, 4) == 1 and select_count(2048, 2304, 9) == 8  # always one dropped


def test_combiner_shapes_and_initial_adjacency():
    comb = GCNCombiner(tokens=480, dim=16, num_classes=7, divisor=64)
    assert comb.pool.out_features == 7 and comb.alpha.item() == 0.0
    assert torch.allclose(comb.adjacency, torch.eye(7) / 100 + 0.01)
    comb.eval()
    assert comb(torch.randn(3, 480, 16)).shape == (3, 7)


def test_loss_terms_on_hand_checked_cases():
    assert background_loss(torch.zeros(2, 3, 4)) == 1.0  # tanh(0) = 0 is 1 away from -1
    assert background_loss(torch.full((1, 1, 1), 50.0)) == pytest.approx(4.0)
    down, up = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    t = 64.0
    ref = F.kl_div((down / t).log_softmax(-1), (up / t).softmax(-1), reduction="sum") / down.numel()
    assert torch.isclose(refinement_loss(down, up, t), ref, atol=1e-7)
    assert refinement_loss(up, up, 4.0).abs() < 1e-7
    up.requires_grad_(True)
    down.requires_grad_(True)
    refinement_loss(down, up, t).backward()
    assert up.grad is None and down.grad.abs().sum() > 0  # the target (bottom-up) is detached


def test_training_loss_is_the_weighted_sum_of_its_terms():
    model = tiny("herbs").train()
    model.on_epoch_start(0, 80)
    out = model.training_step(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]), ctx())
    c, logs = model.cfg, out.logs
    expected = (c.lambda_layer * logs["layers"] + c.lambda_drop * logs["background"] + c.lambda_comb * logs["combiner"]
                + c.lambda_refine * logs["refinement"])
    assert torch.isclose(out.loss, expected) and logs["temperature"] == 64.0
    pim = tiny("pim").train()
    out = pim.training_step(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]), ctx())
    assert "refinement" not in out.logs and pim.cfg.lambda_layer == 0.5


def test_temperature_schedule():
    model = tiny("herbs")
    seen = []
    for epoch in range(80):
        model.on_epoch_start(epoch, 80)
        seen.append(model.temperature)
    assert seen[0] == seen[9] == 64 and seen[10] == 32 and seen[69] == 1 and seen[70] == seen[79] == 0.5


def test_inference_is_the_mean_softmax_of_nine_or_five_outputs():
    for method, count in (("herbs", 9), ("pim", 5)):
        model = tiny(method, stages=[-4, -3, -2, -1]).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            out = model.outputs(x)
            levels = out["up"] + (out["down"] if method == "herbs" else [])
            assert len(levels) + 1 == count
            probs = sum(l.mean(1).softmax(-1) for l in levels) + out["comb"].softmax(-1)
            assert torch.allclose(model(x).exp(), probs / count, atol=1e-6)


def test_temperature_survives_a_resume(tmp_path, synth_root):
    over = tiny_overrides(synth_root, tmp_path / "h", **{"train.epochs": 3, "train.keep_checkpoints": 5,
                                                         "method.temperature_step": 1, "data.img_size": 64,
                                                         "data.resize": 72, "eval.explain_samples": 0,
                                                         "train.grad_accum": 1})
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "herbs.yaml", over)
    run = train(cfg, progress=False)
    steps = sorted(ckpt.step_checkpoints(run.run_dir))
    temps = [ckpt.load_checkpoint(p)["method_state"]["temperature"] for _, p in steps]
    assert temps == [64.0, 32.0, 16.0]  # the checkpoint at the end of epoch e carries T(e)
    logged = [json.loads(x)["temperature"] for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"temperature"' in x]
    assert set(logged) <= {64.0, 32.0, 16.0}
    # resume from the end of epoch 0: the next epoch trains at T = 32 again
    from fgvc.inference import load_run

    assert load_run(steps[0][1]).model.temperature == 64.0


@pytest.mark.parametrize("method,backbone,args", [
    ("herbs", "test_resnet", "{}"), ("pim", "swin_tiny_patch4_window7_224",
                                     "{embed_dim: 16, depths: [1,1,1,1], num_heads: [1,1,1,1], window_size: 2}")])
def test_other_backbone_family_trains(method, backbone, args, synth_root, tmp_path, capsys):
    code = main(["train", str(ROOT / "fgvc" / "configs" / "smoke" / f"{method}.yaml"), f"data.root={synth_root}",
                 f"out={tmp_path / 'r'}", f"model.backbone={backbone}", f"model.backbone_args={args}",
                 "train.epochs=1", "--quiet"])
    assert code == 0, capsys.readouterr().err


def test_merged_levels_follow_the_official_swin_layout():
    torch.manual_seed(0)
    model = create_model("herbs", backbone="swin_tiny_patch4_window7_224", num_classes=5, img_size=64,
                         backbone_args=SWIN, fpn_size=16, levels="merged")
    # stage outputs would be 16, 8, 4, 2 cells per side; after the next merge: 8, 4, 2, then the last stage's 2
    assert model.shapes == [(8, 8), (4, 4), (2, 2), (2, 2)]
    assert [p[0].in_features for p in model.proj] == [32, 64, 128, 128]
    every = tiny("herbs", "swin_tiny_patch4_window7_224", levels="stages", stages=[-4, -3, -2, -1])
    assert every.shapes == [(16, 16), (8, 8), (4, 4), (2, 2)]
    # stage levels by default: the strides of the official levels (8, 16, 32)
    assert tiny("herbs", "swin_tiny_patch4_window7_224", levels="stages").shapes == [(8, 8), (4, 4), (2, 2)]
    auto = tiny("herbs", "swin_tiny_patch4_window7_224")  # auto: merged levels and learned token maps on Swin
    assert auto.shapes == model.shapes and auto.resample == "linear" and auto.up[0].map is not None
    assert auto.cfg.levels == "auto" and auto.cfg.resample == "auto"  # resolved on the instance, not in the config
    cnn = tiny("herbs", "test_resnet")
    assert cnn.levels == "stages" and cnn.resample == "bilinear"
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    # a recipe's Swin-only choice on another backbone: the generic levels, and the run log says so
    fallback = tiny("herbs", "test_resnet", levels="merged")
    assert fallback.levels == "stages" and any("levels=merged needs a Swin-like backbone" in n for n in fallback.notes)
