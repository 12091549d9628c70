"""PMG's faithful details, derived from the paper and the official code's behaviour: the jigsaw generator (its
arrangements and their distribution), one update per granularity, the test rules, the widths, the official
parameter names."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext
from fgvc.methods.pmg import jigsaw, jigsaw_permutation, official_name
from fgvc.methods import create_model


def official_jigsaw(images: torch.Tensor, n: int, order: list) -> torch.Tensor:
    """The official utils.jigsaw_generator with its shuffled cell list given, and the piece size of the input."""
    block = images.shape[-1] // n
    jig = images.clone()
    for x, y in order:
        temp = jig[..., 0:block, 0:block].clone()
        jig[..., 0:block, 0:block] = jig[..., x * block:(x + 1) * block, y * block:(y + 1) * block].clone()
        jig[..., x * block:(x + 1) * block, y * block:(y + 1) * block] = temp
    return jig


def perm_of(order: list, n: int) -> torch.Tensor:
    perm = list(range(n * n))
    for x, y in order:
        c = x * n + y
        perm[0], perm[c] = perm[c], perm[0]
    return torch.tensor(perm)


@pytest.mark.parametrize("n,size", [(2, 8), (4, 16), (8, 64), (3, 10)])
def test_the_puzzle_is_the_official_generators(n, size):
    images = torch.randn(2, 3, size, size)
    order = [[a, b] for a in range(n) for b in range(n)]
    random.Random(n).shuffle(order)
    got = jigsaw(images, n, perm_of(order, n))
    assert torch.equal(got, official_jigsaw(images, n, order))
    if size % n:  # the strip beyond n * (size // n) stays
        k = n * (size // n)
        assert torch.equal(got[..., k:], images[..., k:]) and torch.equal(got[..., k:, :], images[..., k:, :])


def test_the_arrangements_follow_the_official_distribution():
    """n = 2: the swap procedure reaches only some of the 24 arrangements of 4 pieces, and fgvc's draws must
    follow the official frequencies, not a uniform shuffle."""
    draws = 24_000
    rng = random.Random(0)
    official = Counter()
    for _ in range(draws):
        order = [[a, b] for a in range(2) for b in range(2)]
        rng.shuffle(order)
        official[tuple(perm_of(order, 2).tolist())] += 1
    g = torch.Generator().manual_seed(0)
    ours = Counter(tuple(jigsaw_permutation(2, g).tolist()) for _ in range(draws))
    assert set(ours) == set(official)
    for k in official:
        assert abs(ours[k] - official[k]) < 5 * (official[k] ** 0.5) + 10, (k, ours[k], official[k])
    assert len(official) < 24  # a uniform shuffle of the pieces would reach all 24: a real test of the procedure


def model(**options):
    torch.manual_seed(0)
    return create_model("pmg", backbone="test_resnet", num_classes=5, img_size=64, feature_size=32, **options)


def test_each_phase_trains_its_granularity_and_classifier():
    m = model()
    m.train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    assert m.update_phases() == 4
    for phase, n in enumerate([8, 4, 2]):
        torch.manual_seed(7)
        c = StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"), phase=phase)
        state = {k: v.clone() for k, v in m.state_dict().items()}
        out = m.training_step(x, y, c)
        m.zero_grad(set_to_none=True)
        out.loss.backward()
        trained = {name.split(".")[0] for name, p in m.named_parameters() if p.grad is not None}
        torch.manual_seed(7)  # the same arrangement again (training-mode BN: batch statistics, the same outputs)
        with torch.no_grad():
            expected = F.cross_entropy(m.outputs(jigsaw(x, n))[phase], y)
        m.load_state_dict(state)  # the running statistics both passes moved
        assert torch.allclose(out.loss, expected, atol=1e-5), phase
        assert f"classifier{phase + 1}" in trained and "classifier_concat" not in trained
        assert not any(f"classifier{j + 1}" in trained for j in range(3) if j != phase)
    c = StepContext(step=0, epoch=0, total_steps=1, total_epochs=1, criterion=build_criterion("ce"), phase=3)
    m.zero_grad(set_to_none=True)
    out = m.training_step(x, y, c)
    assert torch.allclose(out.loss, 2 * out.logs["cls_concat"]) and out.logits is not None


def test_the_engine_makes_four_updates_a_batch(tmp_path, monkeypatch):
    import fgvc.engine.trainer as trainer
    from fgvc.config import load_config
    from fgvc.recipes import RECIPES

    calls = []
    real = trainer.apply_update
    monkeypatch.setattr(trainer, "apply_update", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = load_config(RECIPES / "smoke" / "pmg.yaml", ["train.steps=2", f"out={tmp_path / 'r'}",
                                                        "eval.explain_samples=0"])
    result = trainer.train(cfg, progress=False)
    assert result.steps == 2 and len(calls) == 8


def test_the_test_rules():
    m = model()
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = m.outputs(x)
        assert len(outs) == 4
        assert torch.allclose(m(x), outs[0] + outs[1] + outs[2] + outs[3], atol=1e-6)
        m.cfg.inference = "concat"
        assert torch.allclose(m(x), outs[3])


def test_the_official_width_on_resnet50_and_a_budgeted_one_on_lite0():
    import timm

    r50 = create_model("pmg", backbone="resnet50", num_classes=200, img_size=448)
    assert r50.width == 512 and "the official width" in r50.notes[-1]
    assert r50.conv_block1[0].conv.weight.shape == (512, 512, 1, 1) and r50.classifier_concat[1].in_features == 3072
    lite = create_model("pmg", backbone="efficientnet_lite0", num_classes=10, img_size=160)
    assert lite.width < 512 and "1.5x the backbone" in lite.notes[-1]
    # the official names: the torchvision ResNet-50 as `features`, the blocks and classifiers as they are
    ours = r50.state_dict()
    official = {f"features.{k}": v.shape for k, v in timm.create_model("resnet50").state_dict().items()}
    official.update({k: v.shape for k, v in ours.items() if not k.startswith("backbone.")})
    for k, shape in official.items():
        mapped = official_name(k)
        if k.startswith("features.fc."):
            assert mapped is None
            continue
        assert mapped in ours and ours[mapped].shape == shape, k
