"""Tensors become arrays, numbers and images from any device and dtype (the first GPU run's traceback:
``.numpy()`` on a CUDA tensor in the final report's overlays)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

from fgvc.arrays import as_numpy
from fgvc.explain import render, to_image
from fgvc.methods.base import Explanation

PACKAGE = Path(__file__).resolve().parent.parent / "fgvc"


def test_only_as_numpy_calls_tensor_numpy():
    """``Tensor.numpy`` fails on a CUDA tensor and on bfloat16; every conversion goes through as_numpy."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "arrays.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy":
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f".numpy() outside fgvc/arrays.py: {offenders}"


def test_as_numpy_widens_half_precision_and_detaches():
    x = torch.randn(3, 4, requires_grad=True)
    for dtype in (torch.bfloat16, torch.float16):
        a = as_numpy((x * 2).to(dtype))
        assert a.dtype == np.float32 and np.allclose(a, (x * 2).detach().numpy(), atol=0.05)
    assert as_numpy(torch.tensor([1, 2])).dtype == np.int64


def test_overlays_render_from_bfloat16_outputs():
    """What autocast hands back on a GPU (bf16 maps, logits and boxes) draws like float32."""
    images = torch.randn(2, 3, 32, 32).to(torch.bfloat16)
    expl = Explanation(logits=torch.randn(2, 5).to(torch.bfloat16),
                       maps={"map": torch.rand(2, 4, 4).to(torch.bfloat16)},
                       boxes={"box": torch.tensor([[1.0, 2.0, 20.0, 25.0]] * 2).to(torch.bfloat16)},
                       points={"pts": torch.rand(2, 3, 2).mul(30).to(torch.bfloat16)})
    img = to_image(images[0], (0.5,) * 3, (0.5,) * 3)
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    out = render(img, expl, 0, "caption")
    assert out.width > 32 and out.height > 32
