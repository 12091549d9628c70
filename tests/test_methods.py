"""Every registered method, through the contract: parametrized over the registry.

Registering a method enrolls it here; each must ship ``configs/smoke/<name>.yaml``, whose tiny backbone
the tests build. Method-specific faithful details live in ``test_method_<name>.py``.
"""

from __future__ import annotations

import pytest
import torch

from fgvc.config import load_config
from fgvc.errors import ConfigError
from fgvc.losses import build_criterion
from fgvc.methods.base import Explanation, StepContext
from fgvc.methods.ops import crop_and_zoom
from fgvc.methods import create_model_from_config, get_method, list_methods, register_method

from conftest import ROOT

METHODS = list_methods()
K = 5


def build(name: str):
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / f"{name}.yaml")
    assert cfg.model.method == name
    torch.manual_seed(0)
    return create_model_from_config(cfg, K), cfg.data.img_size


def ctx(step=0, phase=0):
    return StepContext(step=step, epoch=0, total_steps=10, total_epochs=1, criterion=build_criterion("ce"),
                       phase=phase)


@pytest.mark.parametrize("name", METHODS)
def test_smoke_recipe_exists(name):
    assert (ROOT / "fgvc" / "configs" / "smoke" / f"{name}.yaml").is_file()
    cls = get_method(name)
    assert cls.paper and cls.code and cls.backbones


@pytest.mark.parametrize("name", METHODS)
def test_forward_training_step_backward_explain(name):
    model, size = build(name)
    x = torch.randn(2, 3, size, size)
    y = torch.tensor([0, 3])
    model.train()
    for phase in range(model.update_phases()):  # a batch's updates (one for most methods; PMG: four)
        out = model.training_step(x, y, ctx(phase=phase))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.logs.values())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    model.eval()
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, K) and torch.isfinite(logits).all()
        assert torch.allclose(model(x), logits)  # inference is deterministic
        e = model.explain(x)
    assert isinstance(e, Explanation) and e.logits.shape == (2, K)
    assert e.maps or e.boxes or e.points
    for m in e.maps.values():
        assert m.ndim == 3 and m.shape[0] == 2
    for b in e.boxes.values():
        assert b.shape[0] == 2 and b.shape[-1] == 4 and b.ndim in (2, 3)
        assert (b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all()
    for p in e.points.values():
        assert p.ndim == 3 and p.shape[0] == 2 and p.shape[2] == 2


@pytest.mark.parametrize("name", METHODS)
def test_loss_is_swappable_for_gce(name):
    model, size = build(name)
    x, y = torch.randn(2, 3, size, size), torch.tensor([1, 2])
    gce = StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("gce", gce_k=2))
    torch.manual_seed(0)
    a = model.training_step(x, y, gce).loss
    torch.manual_seed(0)
    b = model.training_step(x, y, ctx()).loss
    assert torch.isfinite(a) and not torch.allclose(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_param_groups_cover_every_parameter_once(name):
    model, _ = build(name)
    groups = model.param_groups(0.1, 10.0, 1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    for g in groups:
        assert g["lr"] == (0.1 if g["name"].startswith("backbone") else 1.0)
        assert (g["weight_decay"] == 0) == g["name"].endswith("no_decay")


@pytest.mark.parametrize("name", METHODS)
def test_state_survives_a_state_dict_round_trip(name):
    model, size = build(name)
    model.train()
    model.training_step(torch.randn(2, 3, size, size), torch.tensor([0, 1]), ctx()).loss.backward()
    other, _ = build(name)
    other.load_state_dict(model.state_dict())
    other.load_checkpoint_state(model.state_for_checkpoint())
    model.eval(), other.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(model(x), other(x))


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_method(get_method("baseline"))
    with pytest.raises(ConfigError, match="unknown method 'basline' \\(did you mean baseline"):
        get_method("basline")


def test_crop_and_zoom_takes_the_right_pixels():
    img = torch.arange(8 * 8, dtype=torch.float64).reshape(1, 1, 8, 8)
    full = crop_and_zoom(img, torch.tensor([[0.0, 0.0, 7.0, 7.0]]))
    assert torch.allclose(full, img)  # the whole image at its own size is the identity
    crop = crop_and_zoom(img, torch.tensor([[2.0, 3.0, 5.0, 6.0]]), size=(4, 4))
    assert torch.allclose(crop, img[:, :, 3:7, 2:6])  # integer box at its own size: exact pixels
    both = crop_and_zoom(torch.cat([img, img + 100]), torch.tensor([[0.0, 0, 3, 3], [4.0, 4, 7, 7]]), size=(4, 4))
    assert torch.allclose(both[0], img[0, :, :4, :4]) and torch.allclose(both[1], img[0, :, 4:, 4:] + 100)
    zoom = crop_and_zoom(img, torch.tensor([[0.0, 0.0, 3.0, 3.0]]), size=(8, 8), align_corners=True)
    assert torch.allclose(zoom[0, 0, 0, 0], img[0, 0, 0, 0]) and torch.allclose(zoom[0, 0, -1, -1], img[0, 0, 3, 3])


@pytest.mark.parametrize("name", METHODS)
def test_forward_exports_with_torch_export(name):
    """Inference is one exportable call: torch.export captures it and gives the same logits."""
    model, size = build(name)
    model.eval()
    x = torch.randn(2, 3, size, size)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def test_the_baseline_head_fits_the_width_timm_pools_to():
    """MobileNetV3 and EfficientViT-B pool to head_hidden_size (a conv head before the classifier), not to
    num_features: the head was sized by the latter ('mat1 and mat2 shapes cannot be multiplied')."""
    import fgvc

    for backbone in ("mobilenetv3_small_100", "efficientvit_b0"):
        model = fgvc.create_model("baseline", backbone=backbone, num_classes=K, img_size=64)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, K), backbone


@pytest.mark.parametrize("method,backbone,size", [("pim", "inception_v3", 96), ("herbs", "efficientvit_m0", 64),
                                                   ("pmg", "inception_v3", 96)])
def test_a_last_stage_of_one_pixel_builds_and_trains(method, backbone, size):
    """The meta-device probes ran a batch of one in training mode: batch norm of a 1x1 map raised."""
    import fgvc

    model = fgvc.create_model(method, backbone=backbone, num_classes=K, img_size=size)
    out = model.training_step(torch.randn(2, 3, size, size), torch.tensor([0, 1]), ctx())
    assert torch.isfinite(out.loss)


def test_a_size_too_small_for_the_backbone_is_refused_naming_the_smallest():
    import fgvc

    with pytest.raises(ConfigError, match="inception_v3 cannot take 64 px inputs .* the smallest size it takes is 75 px"):
        fgvc.create_model("baseline", backbone="inception_v3", num_classes=K, img_size=64)
    with pytest.raises(ConfigError, match="square inputs, one integer .* got \\(64, 96\\)"):
        fgvc.create_model("herbs", backbone="resnet18", num_classes=K, img_size=(64, 96))


@pytest.mark.parametrize("name", ["herbs", "pim", "transfg", "rams_trans"])
def test_images_of_another_size_are_refused_in_one_line(name):
    model, size = build(name)
    model.eval()
    with pytest.raises(ValueError, match=f"built for {size} x {size} inputs, got {size} x {size + 16}"):
        model(torch.randn(1, 3, size, size + 16))


def test_pmg_refuses_a_backbone_with_fewer_than_three_strides_in_words_about_the_backbone():
    import fgvc

    with pytest.raises(ConfigError, match="pmg needs three stages at different strides .* levit_128s gives 2"):
        fgvc.create_model("pmg", backbone="levit_128s", num_classes=K, img_size=64)


@pytest.mark.parametrize("name", ["wsdan", "herbs", "rams_trans"])
def test_test_rules_that_average_probabilities_stay_finite_for_a_confident_network(name):
    """log(mean(softmax)) underflowed to -inf once a probability rounded to 0 (seen on ResNet-50 WS-DAN after one
    step at lr 1e-2); the log-sum-exp of log-softmaxes gives the same value without it."""
    model, size = build(name)
    if name == "rams_trans":
        model.cfg.inference = "mean"  # the rule that averages the scales' probabilities (the paper's is "first")
    model.eval()
    x = torch.randn(2, 3, size, size)
    reference = model(x)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == K:
                module.weight.mul_(1e4)  # logits thousands apart: softmax gives exact zeros
    confident = model(x)
    assert torch.isfinite(reference).all() and torch.isfinite(confident).all()
    assert torch.allclose(reference.exp().sum(1), torch.ones(2), atol=1e-4)


def test_log_mean_softmax_equals_the_log_of_the_mean_where_that_is_finite():
    from fgvc.methods.ops import log_mean_softmax

    a, b = torch.randn(3, 7), torch.randn(3, 7)
    expected = ((a.softmax(1) + b.softmax(1)) / 2).log()
    assert torch.allclose(log_mean_softmax([a, b]), expected, atol=1e-6)
    far = torch.tensor([[0.0, 2000.0]])
    assert torch.isfinite(log_mean_softmax([far, far])).all()
