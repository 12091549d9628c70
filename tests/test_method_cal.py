"""CAL's faithful details, derived from the paper's equations and the official code's behaviour: the
counterfactual maps and the effect, the loss weights of the training script, the center update, the multicrop
test rule, the ResNet's last stage at stride 16, the official parameter names, and the backbones it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fgvc.methods.cal as cal_module
from fgvc.errors import ConfigError
from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext
from fgvc.methods.ops import crop_and_zoom
from fgvc.methods import create_model


def tiny(**options):
    torch.manual_seed(0)
    return create_model("cal", backbone="test_resnet", num_classes=5, img_size=64, num_maps=4, **options)


def ctx():
    return StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"))


def test_counterfactual_maps_are_uniform_0_2_in_training_and_ones_at_test(monkeypatch):
    model = tiny()
    seen = []
    real = cal_module.bilinear_attention_pooling
    monkeypatch.setattr(cal_module, "bilinear_attention_pooling", lambda f, a, eps: seen.append(a) or real(f, a, eps))
    feats = torch.randn(64, model.fc.in_features // 4, 6, 6)
    att = torch.rand(64, 4, 6, 6)
    model.train()
    model.counterfactual_logits(feats, att)
    a = seen[-1]
    assert a.shape == att.shape and a.min() >= 0 and a.max() <= 2
    assert abs(a.mean().item() - 1) < 0.02 and abs(a.var().item() - 4 / 12) < 0.02  # U(0, 2)
    model.eval()
    model.counterfactual_logits(feats, att)
    assert torch.equal(seen[-1], torch.ones_like(att))


def test_the_loss_is_the_training_scripts():
    """CE(raw)/3 + CE([crop; drop])*2/3 + CE([effects]) + center, with crop and drop in one pass."""
    model = tiny()
    model.train()
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 2, 4])
    crops, dropped = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    model.augment = lambda images, att, generator=None: (crops, dropped, {})
    fake = {}

    def counterfactual(feats, att):  # deterministic counterfactual logits, remembered for the reference
        out = model.classify(cal_module.bilinear_attention_pooling(feats, torch.full_like(att, 0.5), 1e-6))
        fake[len(fake)] = out
        return out

    model.counterfactual_logits = counterfactual
    centers = model.centers.clone()
    out = model.training_step(x, y, ctx())
    model.centers.copy_(centers)
    feats, att, emb = model.maps_and_embedding(x)
    logits = model.classify(emb)
    feats_a, att_a, emb_a = model.maps_and_embedding(torch.cat([crops, dropped]))
    logits_a = model.classify(emb_a)
    effect = torch.cat([logits - fake[0], logits_a - fake[1]])
    center = (emb - F.normalize(centers[y], dim=-1)).pow(2).sum(1).mean()
    expected = (F.cross_entropy(logits, y) / 3 + F.cross_entropy(logits_a, y.repeat(2)) * 2 / 3
                + F.cross_entropy(effect, y.repeat(3)) + center)
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert set(out.logs) == {"cls_raw", "cls_aug", "effect", "center"}


def test_centers_update_as_the_official_indexed_add():
    model = tiny()
    model.train()
    model.centers.normal_()
    c0 = model.centers.clone()
    f = F.normalize(torch.randn(6, c0.shape[1]), dim=-1)
    y = torch.tensor([1, 3, 1, 0, 3, 1])  # duplicates
    model.center_loss(f, y)
    # feature_center[y] += beta * (f - c_hat): an indexed assignment, so a label seen twice keeps one update;
    # fgvc keeps the last (torch leaves the choice unspecified: written here as the sequential writes)
    official = c0.clone()
    step = 0.05 * (f - F.normalize(c0[y], dim=-1))
    for i in range(len(y)):
        official[y[i]] = c0[y[i]] + step[i]
    assert torch.allclose(model.centers, official, atol=1e-6)
    assert torch.equal(model.centers[2], c0[2])


def test_multicrop_averages_the_logits_of_eight_views():
    model = tiny(inference="multicrop")
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        views = []
        for img in (x, x.flip(3)):
            _, att, emb = model.maps_and_embedding(img)
            views.append(model.classify(emb))
            for theta, pad in ((0.3, 0.1), (0.2, 0.1), (0.1, 0.05)):
                views.append(model.classify(model.maps_and_embedding(
                    crop_and_zoom(img, model.refine_boxes(att, (64, 64), theta, pad)))[2]))
        expected = torch.stack(views).mean(0)
        assert torch.allclose(model(x), expected, atol=1e-5)
        model.cfg.inference = "refine"
        _, att, emb = model.maps_and_embedding(x)
        crop = model.maps_and_embedding(crop_and_zoom(x, model.refine_boxes(att, (64, 64), 0.1, 0.05)))[2]
        assert torch.allclose(model(x), (model.classify(emb) + model.classify(crop)) / 2, atol=1e-5)


def test_resnet_layer4_at_stride_16_and_the_official_names_map_onto_the_model():
    import timm
    from torch import nn

    model = create_model("cal", backbone="resnet101", num_classes=7, img_size=64, feature_layer="layer4",
                         unstride=True, num_maps=32)
    assert model.backbone(torch.randn(1, 3, 64, 64))[0].shape[-2:] == (4, 4)  # 64 / 16, not 64 / 32
    r = timm.create_model("resnet101")
    official = nn.Sequential(r.conv1, r.bn1, r.act1, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4).state_dict()
    keys = {f"features.{k}": v.shape for k, v in official.items()}
    keys.update({"attentions.conv.weight": (32, 2048, 1, 1), "attentions.bn.weight": (32,), "fc.weight": (7, 32 * 2048)})
    ours = model.state_dict()
    for k, shape in keys.items():
        assert cal_module.official_name(k) in ours, k
        assert tuple(ours[cal_module.official_name(k)].shape) == tuple(shape), k
    assert "fc.bias" not in ours  # the official classifier has no bias


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "convnext_atto"])
def test_cal_and_pmg_train_on_cnns_with_stages(backbone):
    for method, opts in (("cal", {"num_maps": 4, "inference": "refine"}), ("pmg", {"feature_size": 32})):
        torch.manual_seed(0)
        m = create_model(method, backbone=backbone, num_classes=3, img_size=64, **opts)
        m.train()
        for phase in range(m.update_phases()):
            c = StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"),
                            phase=phase)
            out = m.training_step(torch.randn(2, 3, 64, 64), torch.tensor([0, 2]), c)
            out.loss.backward()
            assert torch.isfinite(out.loss)
        m.eval()
        with torch.no_grad():
            assert m(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("method", ["cal", "pmg"])
@pytest.mark.parametrize("backbone,why", [("vit_tiny_patch16_224", "is a plain ViT"),
                                          ("test_vit", "is a plain ViT")])
def test_a_vit_is_refused_in_one_line_naming_what_is_needed(method, backbone, why):
    with pytest.raises(ConfigError) as e:
        create_model(method, backbone=backbone, num_classes=3, img_size=224 if "tiny" in backbone else 64)
    text = str(e.value)
    assert "\n" not in text and f"{method} needs a backbone with stages" in text and why in text
