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
