"""Builds every method on its paper recipe's backbone with the timm that is importable, and runs each method's
smoke recipe for a training step, an inference pass and ``explain``. Used to find and hold the oldest timm
that pyproject admits (``make timm-floor`` runs it against that version; tests/test_timm_floor.py too).

    PYTHONPATH=/path/to/old/timm python tools/timm_compat.py
"""

from __future__ import annotations

import sys
import traceback

import timm
import torch

import fgvc
from fgvc.config import load_config, read_yaml
from fgvc.losses import build_criterion
from fgvc.methods.base import StepContext
from fgvc.recipes import RECIPES, paper_recipe


def check(method: str) -> None:
    recipe = read_yaml(paper_recipe(method))
    size = recipe["data"]["img_size"]
    with torch.device("meta"):  # the paper's backbone at the paper's size, without memory or weights
        model = fgvc.create_model(method, backbone=recipe["model"]["backbone"], num_classes=200, img_size=size,
                                  **recipe.get("method", {}))
        model.eval()
        assert model(torch.empty(2, 3, size, size)).shape == (2, 200)
    cfg = load_config(RECIPES / "smoke" / f"{method}.yaml")  # a real step on the smoke recipe's tiny backbone
    torch.manual_seed(0)
    small = fgvc.create_model(method, backbone=cfg.model.backbone, num_classes=3, img_size=cfg.data.img_size,
                              backbone_args=cfg.model.backbone_args, **cfg.method)
    x = torch.randn(2, 3, cfg.data.img_size, cfg.data.img_size)
    out = small.training_step(x, torch.tensor([0, 1]), StepContext(0, 0, 1, 1, build_criterion("ce")))
    out.loss.backward()
    small.eval()
    with torch.no_grad():
        assert small(x).shape == (2, 3) and small.explain(x).logits.shape == (2, 3)


def main() -> int:
    failed = []
    for method in fgvc.list_methods():
        try:
            check(method)
            print(f"timm {timm.__version__}: {method} ok")
        except Exception as e:  # noqa: BLE001 - report every method
            failed.append(method)
            print(f"timm {timm.__version__}: {method} FAILED: {e.__class__.__name__}: {e}")
            traceback.print_exc(limit=3, file=sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
