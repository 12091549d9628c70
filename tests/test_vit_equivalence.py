"""The ViT methods with their extra parts switched off are the plain ViT fine-tune (issue 16): the same
losses, step after step, on the same batches with the same optimizer. Anything of fgvc's own on the ViT path
(tokens, norms, head, parameter groups, dropout placement) would make them drift apart. At the backbone's own
input size (160 px for test_vit): at another size the methods resize the position grid as the official codes
do (linear, corners aligned) where timm resizes it bicubically."""

from __future__ import annotations

import torch

from fgvc import create_model
from fgvc.config import TrainConfig
from fgvc.engine.optim import build_optimizer, lr_factor, set_lr
from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext

PLAIN = {
    "rams_trans": dict(scales=1, embed_dropout=0.0, mlp_dropout=0.0),
    "transfg": dict(part_select=False, slide_step=16, part_layer_init="pretrained", contrastive_weight=0.0,
                    embed_dropout=0.0, mlp_dropout=0.0),
}


def losses(method: str, steps: int = 4, **options) -> list[float]:
    torch.manual_seed(0)
    model = create_model(method, backbone="test_vit", num_classes=5, img_size=160, **options)
    torch.manual_seed(1)  # the same head for every model
    head = create_model("baseline", backbone="test_vit", num_classes=5, img_size=160).head
    model.head.load_state_dict(head.state_dict())
    cfg = TrainConfig(lr=0.05, head_lr_scale=10.0, weight_decay=1e-4, warmup_steps=2, clip_grad=1.0)
    opt = build_optimizer(model, cfg)
    criterion = build_criterion("ce")
    g = torch.Generator().manual_seed(2)
    out = []
    model.train()
    for step in range(steps):
        x, y = torch.randn(4, 3, 160, 160, generator=g), torch.randint(0, 5, (4,), generator=g)
        loss = model.training_step(x, y, StepContext(step, 0, steps, 1, criterion)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        set_lr(opt, lr_factor(step + 1, cfg, steps, steps))
        opt.step()
        opt.zero_grad()
        out.append(float(loss.detach()))
    return out


def test_vit_methods_with_their_parts_off_train_like_the_plain_vit():
    plain = losses("baseline")
    assert plain[-1] != plain[0]  # the steps do something
    for method, options in PLAIN.items():
        got = losses(method, **options)
        assert torch.allclose(torch.tensor(got), torch.tensor(plain), rtol=1e-5, atol=1e-6), (method, got, plain)


def test_each_part_switched_on_changes_the_run():
    """The comparison above can fail: turning one part back on moves the losses away from the plain ViT's."""
    plain = torch.tensor(losses("baseline"))
    for method, key, value in (("rams_trans", "scales", 2), ("transfg", "part_select", True),
                               ("transfg", "embed_dropout", 0.1)):
        options = {**PLAIN[method], key: value}
        got = torch.tensor(losses(method, steps=2, **options))
        assert not torch.allclose(got, plain[:2], rtol=1e-5, atol=1e-6), (method, key)
