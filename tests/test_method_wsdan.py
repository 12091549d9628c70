"""WS-DAN's faithful details: BAP, the center loss and its update, attention crops and drops, the inference
rule, the feature-layer choices, and centers that survive a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from fgvc.config import load_config
from fgvc.engine import checkpoint as ckpt
from fgvc.engine.trainer import train
from fgvc.inference import load_run
from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext
from fgvc.methods.ops import crop_and_zoom
from fgvc.methods.wsdan import bilinear_attention_pooling, boxes_from_maps
from fgvc.methods import create_model

from conftest import ROOT, tiny_overrides


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("wsdan", backbone="test_resnet", num_classes=5, img_size=64, num_maps=4, **kw)


def test_bap_against_a_hand_computation():
    torch.manual_seed(0)
    feats, att = torch.randn(2, 3, 4, 5), torch.rand(2, 2, 4, 5)
    emb = bilinear_attention_pooling(feats, att)
    assert emb.shape == (2, 2 * 3)
    for b in range(2):
        vec = []
        for m in range(2):
            for c in range(3):
                p = sum(att[b, m, i, j] * feats[b, c, i, j] for i in range(4) for j in range(5)) / 20
                vec.append(math.copysign(math.sqrt(abs(float(p)) + 1e-12), float(p)))
        vec = torch.tensor(vec)
        assert torch.allclose(emb[b], vec / vec.norm(), atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_center_loss_uses_normalized_centers_and_duplicates_accumulate():
    model = tiny().train()
    model.centers.zero_()
    model.centers[1] = torch.linspace(1, 2, model.centers.shape[1])
    f = torch.nn.functional.normalize(torch.randn(3, model.centers.shape[1]), dim=1)
    y = torch.tensor([1, 1, 3])
    before = model.centers.clone()
    c_hat = torch.nn.functional.normalize(before[y], dim=1)  # class 3's zero center stays zero
    loss = model.center_loss(f, y)
    assert torch.isclose(loss, (f - c_hat).pow(2).sum(1).mean())
    beta = model.cfg.center_beta
    assert torch.allclose(model.centers[1], before[1] + beta * ((f[0] - c_hat[0]) + (f[1] - c_hat[1])), atol=1e-6)
    assert torch.allclose(model.centers[3], beta * f[2], atol=1e-7)
    assert torch.equal(model.centers[0], before[0])
    model.eval()
    model.center_loss(f, y)
    assert torch.allclose(model.centers[3], beta * f[2], atol=1e-7)  # no update outside training


def test_crop_box_from_a_constructed_map():
    maps = torch.zeros(1, 100, 100)
    maps[0, 30:51, 40:61] = 1.0  # rows 30..50, cols 40..60 reach the threshold
    maps[0, 10, 10] = 0.3  # below 0.4 x max: ignored
    box = boxes_from_maps(maps, torch.tensor([0.4]), padding=0.1)
    assert box.tolist() == [[30.0, 20.0, 70.0, 60.0]]  # padded by 10 px on every side
    edge = torch.zeros(1, 100, 100)
    edge[0, 0:5, 95:100] = 1.0
    assert boxes_from_maps(edge, torch.tensor([0.5]), 0.1).tolist() == [[85.0, 0.0, 99.0, 14.0]]  # clamped


def test_augment_crops_the_box_and_drops_the_peak():
    model = tiny()
    images = torch.randn(2, 3, 64, 64)
    att = torch.zeros(2, 4, 8, 8)
    att[:, 2, 2:4, 5:7] = 1.0  # only map 2 is active: it is always the one drawn
    g = torch.Generator().manual_seed(0)
    crops, dropped, aug = model.augment(images, att, generator=g)
    assert torch.allclose(crops, crop_and_zoom(images, aug["boxes"]))
    up = torch.nn.functional.interpolate(att[:, 2:3], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert (~aug["keep"] <= (up > 0)).all()  # only attended pixels are dropped ...
    assert (~aug["keep"]).sum() > 0 and torch.equal(dropped, images * aug["keep"][:, None])
    peak = up[0].argmax()
    assert not aug["keep"][0].flatten()[peak]  # ... and the peak always is
    box = aug["boxes"][0]
    assert box[0] <= 40 <= box[2] and box[1] <= 16 <= box[3]  # the crop covers the attended cells


def test_inference_averages_probabilities_of_raw_and_refined_crop():
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, att, emb = model.maps_and_embedding(x)
        raw = model.classify(emb)
        crop = crop_and_zoom(x, model.refine_boxes(att, (64, 64)))
        refined = model.classify(model.maps_and_embedding(crop)[2])
        expected = (0.5 * raw.softmax(1) + 0.5 * refined.softmax(1)).log()
        assert torch.allclose(model(x), expected, atol=1e-6)
        model.cfg.inference = "raw"
        assert torch.allclose(model(x), raw)


def test_training_loss_is_the_mean_of_three_ces_plus_center():
    model = tiny().train()
    ctx = StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"))
    out = model.training_step(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 2]), ctx)
    logs = out.logs
    assert torch.isclose(out.loss, (logs["cls_raw"] + logs["cls_crop"] + logs["cls_drop"]) / 3 + logs["center"])


def test_feature_layer_by_name_and_the_official_attention_layer():
    torch.manual_seed(0)
    model = create_model("wsdan", backbone="inception_v3", num_classes=3, img_size=299, feature_layer="Mixed_6e",
                         attention="layer").eval()
    assert model.index == 3
    assert not any(n.startswith(("backbone.Mixed_7", "backbone.fc")) for n, _ in model.named_parameters())  # pruned
    with torch.no_grad():
        feats, att, emb = model.maps_and_embedding(torch.randn(1, 3, 299, 299))
    assert feats.shape == (1, 768, 17, 17) and att.shape == (1, 32, 17, 17) and emb.shape == (1, 32 * 768)
    assert model.is_pretrained_parameter("attention.conv.weight")
    dogs = create_model("wsdan", backbone="test_resnet", num_classes=3, img_size=64, feature_layer=-1,
                        attention="features", num_maps=8)
    assert dogs.fc.in_features == 8 * 96


def test_unknown_feature_layer_is_a_config_error():
    from fgvc.errors import ConfigError

    with pytest.raises(ConfigError, match="feature layer 'Mixed_9z' is not a stage"):
        create_model("wsdan", backbone="test_resnet", num_classes=3, img_size=64, feature_layer="Mixed_9z")


def test_the_papers_layer_on_another_backbone_takes_the_stage_at_its_stride():
    """The recipe names Inception-V3's Mixed_6e (stride 16) and the Dogs recipe Mixed_7c (stride 32); on a
    ResNet those become layer3 and layer4, and the model's notes (printed in the run log) say so."""
    six = create_model("wsdan", backbone="resnet18", num_classes=3, img_size=64, feature_layer="Mixed_6e")
    seven = create_model("wsdan", backbone="resnet18", num_classes=3, img_size=64, feature_layer="Mixed_7c")
    assert six.fc.in_features == 32 * 256 and seven.fc.in_features == 32 * 512
    assert "layer3 (stride 16" in six.notes[0] and "'Mixed_6e' is not a stage of resnet18" in six.notes[0]
    assert "layer4 (stride 32" in seven.notes[0]


def test_centers_survive_save_and_resume(tmp_path, synth_root):
    over = tiny_overrides(synth_root, tmp_path / "w", **{"train.epochs": 2, "train.ckpt_every": 2,
                                                         "train.keep_checkpoints": 10, "data.img_size": 64,
                                                         "data.resize": 72, "eval.explain_samples": 0})
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "wsdan.yaml", over)
    full = train(cfg, progress=False)
    state = ckpt.load_checkpoint(full.run_dir / "last.pt")
    assert state["model"]["centers"].abs().sum() > 0
    assert torch.equal(load_run(full.run_dir).model.centers, state["model"]["centers"])
    # resumed from the middle, the centers (and everything else) end bitwise equal
    part = tmp_path / "part"
    part.mkdir()
    (part / "last.pt").write_bytes((full.run_dir / "step-4.pt").read_bytes())
    cfg2 = load_config(ROOT / "fgvc" / "configs" / "smoke" / "wsdan.yaml",
                       tiny_overrides(synth_root, part, **{"train.epochs": 2, "train.ckpt_every": 2,
                                                           "train.keep_checkpoints": 10, "data.img_size": 64,
                                                           "data.resize": 72, "eval.explain_samples": 0}))
    resumed = train(cfg2, resume="auto", progress=False)
    again = ckpt.load_checkpoint(resumed.run_dir / "last.pt")
    for k, v in state["model"].items():
        assert torch.equal(v, again["model"][k]), k
