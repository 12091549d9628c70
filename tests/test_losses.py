"""The classification losses: GCE's faithful details, label smoothing's form."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fgvc.losses import build_criterion, gradient_boosting_ce


def test_gce_equals_ce_when_k_is_all_negatives():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 5, (6,))
    assert torch.allclose(gradient_boosting_ce(logits, y, k=4), F.cross_entropy(logits, y))
    assert torch.allclose(gradient_boosting_ce(logits, y, k=15), F.cross_entropy(logits, y))  # clamped to K-1


def test_gce_hand_computed():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    y = torch.tensor([0])
    # k = 2 hardest negatives: classes 4 (3.0) and 1 (1.0)
    expected = -(2.0 - torch.log(torch.exp(torch.tensor([2.0, 3.0, 1.0])).sum()))
    assert torch.allclose(gradient_boosting_ce(logits, y, k=2), expected)


def test_gce_gradient_only_reaches_true_class_and_topk_negatives():
    torch.manual_seed(1)
    logits = torch.randn(4, 10, requires_grad=True)
    y = torch.tensor([0, 3, 7, 9])
    gradient_boosting_ce(logits, y, k=3).backward()
    nonzero = logits.grad != 0
    assert (nonzero.sum(1) == 4).all()  # the true class and 3 negatives per row
    for b in range(4):
        neg = logits.detach()[b].clone()
        neg[y[b]] = float("-inf")
        top = set(neg.topk(3).indices.tolist()) | {int(y[b])}
        assert set(nonzero[b].nonzero().flatten().tolist()) == top
    # ... and each kept negative gets a larger push than under full CE
    ce_logits = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(ce_logits, y).backward()
    kept = nonzero.clone()
    kept[torch.arange(4), y] = False
    assert (logits.grad[kept] > ce_logits.grad[kept]).all()


def test_label_smoothing_is_the_transfg_form():
    torch.manual_seed(2)
    logits, y = torch.randn(3, 4), torch.tensor([0, 2, 3])
    eps = 0.1
    logp = logits.log_softmax(1)
    manual = ((1 - eps) * -logp[torch.arange(3), y] + eps * -logp.mean(1)).mean()
    assert torch.allclose(build_criterion("smoothing", label_smoothing=eps)(logits, y), manual, atol=1e-6)
