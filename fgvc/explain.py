"""Drawing what a method localizes: heat maps, boxes and selected tokens over the input image (PNG).

One PNG per image: a caption (prediction and probability; with the true label, whether it is right), the
(de-normalized) input with the method's boxes and points, every named heat map blended over the image,
and a legend naming each box or point colour. Drawing uses PIL only, so it works on a headless machine
without matplotlib.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .arrays import as_numpy
from .methods.base import Explanation

COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
_LINE = 16  # pixels per text line


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def colormap(x: np.ndarray) -> np.ndarray:
    """A perceptual blue-green-yellow-red map of values in [0, 1] -> uint8 RGB."""
    x = np.clip(x, 0.0, 1.0)[..., None]
    stops = np.array([[48, 18, 59], [40, 120, 220], [30, 200, 160], [160, 230, 50], [250, 180, 30], [200, 30, 10]],
                     dtype=np.float32)
    pos = x * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def to_image(t: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalized ``[3, H, W]`` tensor (any device and dtype) back to uint8 ``[H, W, 3]``."""
    x = as_numpy(t).astype(np.float32) * np.asarray(std, np.float32)[:, None, None] + \
        np.asarray(mean, np.float32)[:, None, None]
    return (x.clip(0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def _normalize(m: torch.Tensor) -> np.ndarray:
    m = as_numpy(m).astype(np.float32)
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def text_block(lines: list[tuple[str, tuple[int, int, int]]], width: int) -> Image.Image:
    """Lines of text wrapped to ``width`` pixels (about 7 px per character), each in its colour."""
    font = _font()
    wrapped = [(part, colour) for text, colour in lines for part in textwrap.wrap(text, max(12, width // 7)) or [""]]
    block = Image.new("RGB", (width, _LINE * len(wrapped) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(block)
    for i, (text, colour) in enumerate(wrapped):
        draw.text((3, 2 + i * _LINE), text, fill=colour, font=font)
    return block


def _legend(names: list[str], width: int) -> Optional[Image.Image]:
    """Colour swatches with the name of each box or point set."""
    if not names:
        return None
    font = _font()
    rows, x, y = [[]], 3, 0
    for name in names:  # flow the entries left to right, wrapping to new rows
        w = 18 + 7 * len(name) + 12
        if x + w > width and rows[-1]:
            rows.append([])
            x = 3
        rows[-1].append((x, name))
        x += w
    legend = Image.new("RGB", (width, _LINE * len(rows) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    k = 0
    for r, row in enumerate(rows):
        for x, name in row:
            y = 2 + r * _LINE
            draw.rectangle([x, y + 2, x + 12, y + 12], outline=COLOURS[k % len(COLOURS)], width=3)
            draw.text((x + 18, y), name, fill=(0, 0, 0), font=font)
            k += 1
    return legend


def render(image: np.ndarray, expl: Explanation, i: int, caption: str = "", alpha: float = 0.5,
           min_size: int = 224, caption_lines: Optional[list[tuple[str, tuple[int, int, int]]]] = None) -> Image.Image:
    """One figure for image ``i`` of the batch ``expl`` describes: caption, panels, legend."""
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_size / max(h, w))))
    big = np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST))
    base = Image.fromarray(big)
    draw = ImageDraw.Draw(base)
    names = []
    for name, boxes in expl.boxes.items():
        colour = COLOURS[len(names) % len(COLOURS)]
        for box in boxes[i].float().reshape(-1, 4).tolist():
            x0, y0, x1, y1 = (v * scale for v in box)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(2, scale))
        names.append(name)
    for name, pts in expl.points.items():
        colour = COLOURS[len(names) % len(COLOURS)]
        r = max(3, scale * 2)
        for x, y in pts[i].float().tolist():
            draw.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], outline=colour, width=2)
        names.append(name)
    panels = [(base, "input" + (" with boxes and points" if names else ""))]
    for name, maps in expl.maps.items():
        m = F.interpolate(maps[i][None, None].float(), size=(h * scale, w * scale), mode="bilinear",
                          align_corners=False)[0, 0]
        heat = colormap(_normalize(m))
        panels.append((Image.fromarray((big * (1 - alpha) + heat * alpha).astype(np.uint8)), name))
    titled = []
    for img, title in panels:  # each panel with its full title above it
        head = text_block([(title, (0, 0, 0))], img.width)
        panel = Image.new("RGB", (img.width, head.height + img.height), (255, 255, 255))
        panel.paste(head, (0, 0))
        panel.paste(img, (0, head.height))
        titled.append(panel)
    width = sum(p.width for p in titled) + 6 * (len(titled) - 1)
    top = text_block(caption_lines or [(caption, (0, 0, 0))], width)
    legend = _legend(names, width)
    height = top.height + max(p.height for p in titled) + (legend.height if legend else 0)
    out = Image.new("RGB", (width, height), (255, 255, 255))
    out.paste(top, (0, 0))
    x = 0
    for p in titled:
        out.paste(p, (x, top.height))
        x += p.width + 6
    if legend:
        out.paste(legend, (0, height - legend.height))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


def caption_for(probs: torch.Tensor, class_names: Sequence[str], truth: Optional[int] = None
                ) -> list[tuple[str, tuple[int, int, int]]]:
    """Caption lines: the prediction with its probability, and (with the truth) the true label and a verdict."""
    p, c = probs.float().max(0)
    pred = f"predicted: {class_names[int(c)]} ({100 * float(p):.1f}%)"
    if truth is None or truth < 0:
        return [(pred, (0, 0, 0))]
    right = int(c) == truth
    return [(f"true: {class_names[truth]}", (0, 0, 0)),
            (pred + ("  - right" if right else "  - wrong"), (0, 128, 0) if right else (200, 0, 0))]


@torch.no_grad()
def explain_tensors(model, images: torch.Tensor, class_names: Sequence[str], mean_std, out_dir: Path,
                    names: Sequence[str], truths: Optional[Sequence[int]] = None) -> list[Path]:
    """Runs ``model.explain`` on a batch and writes one PNG per image; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    expl = model.explain(images)
    model.train(was_training)
    probs = expl.logits.float().softmax(1)
    paths = []
    for i in range(images.shape[0]):
        lines = caption_for(probs[i], class_names, None if truths is None else int(truths[i]))
        img = render(to_image(images[i], *mean_std), expl, i, caption_lines=lines)
        path = out_dir / f"{_slug(names[i])}.png"
        img.save(path)
        paths.append(path)
    return paths
