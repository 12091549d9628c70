"""Drawing what a method localizes: heat maps, boxes and selected tokens over the input image (PNG).

One PNG per image: the first panel is the (de-normalized) input with the method's boxes and points and
the top prediction; every further panel is one named heat map blended over the image. Drawing uses PIL
only, so it works without matplotlib on a headless machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .methods.base import Explanation

_BOX_COLOURS = [(255, 40, 40), (40, 220, 40), (40, 120, 255), (255, 200, 0), (255, 0, 255), (0, 230, 230)]


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
    """A normalized ``[3, H, W]`` tensor back to uint8 ``[H, W, 3]``."""
    x = t.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _normalize(m: torch.Tensor) -> np.ndarray:
    m = m.float()
    lo, hi = m.min(), m.max()
    return ((m - lo) / (hi - lo)).numpy() if hi > lo else torch.zeros_like(m).numpy()


def _panel(img: np.ndarray, title: str) -> Image.Image:
    h, w = img.shape[:2]
    canvas = Image.new("RGB", (w, h + 14), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), title[: max(8, w // 6)], fill=(0, 0, 0))
    return canvas


def render(image: np.ndarray, expl: Explanation, i: int, caption: str = "", alpha: float = 0.5,
           min_size: int = 192) -> Image.Image:
    """One strip of panels for image ``i`` of the batch ``expl`` describes."""
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_size / max(h, w))))
    big = np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST))
    base = Image.fromarray(big)
    draw = ImageDraw.Draw(base)
    names = []
    for k, (name, boxes) in enumerate(expl.boxes.items()):
        colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
        for box in boxes[i].reshape(-1, 4).tolist():
            x0, y0, x1, y1 = (v * scale for v in box)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, scale))
        names.append(name)
    for k, (name, pts) in enumerate(expl.points.items()):
        colour = _BOX_COLOURS[(k + len(expl.boxes)) % len(_BOX_COLOURS)]
        r = max(2, scale * 2)
        for x, y in pts[i].tolist():
            draw.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], outline=colour, width=2)
        names.append(name)
    panels = [_panel(np.asarray(base), caption or "input")]
    for name, maps in expl.maps.items():
        m = F.interpolate(maps[i][None, None].float(), size=(h * scale, w * scale), mode="bilinear",
                          align_corners=False)[0, 0]
        heat = colormap(_normalize(m))
        panels.append(_panel((big * (1 - alpha) + heat * alpha).astype(np.uint8), name))
    legend = ", ".join(names)
    width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    out = Image.new("RGB", (width, panels[0].height + (14 if legend else 0)), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 4
    if legend:
        ImageDraw.Draw(out).text((2, panels[0].height + 1), f"boxes/points: {legend}", fill=(0, 0, 0))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


@torch.no_grad()
def explain_tensors(model, images: torch.Tensor, class_names: Sequence[str], mean_std, out_dir: Path,
                    names: Sequence[str]) -> list[Path]:
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
        p, c = probs[i].max(0)
        caption = f"{class_names[int(c)]} {100 * float(p):.0f}%"
        img = render(to_image(images[i], *mean_std), expl, i, caption)
        path = out_dir / f"{_slug(names[i])}.png"
        img.save(path)
        paths.append(path)
    return paths


def explain_records(model, records, transform: Callable, class_names: Sequence[str], out_dir: Path,
                    device: torch.device, mean_std, batch_size: int = 8) -> list[Path]:
    """Overlays for dataset records (the report of a finished run)."""
    return explain_paths(model, [r.path for r in records], transform, class_names, out_dir, device, mean_std,
                         batch_size, crops=[r.crop_bottom for r in records])


def explain_paths(model, paths: Sequence[str], transform: Callable, class_names: Sequence[str], out_dir: Path,
                  device: torch.device, mean_std, batch_size: int = 8,
                  crops: Optional[Sequence[int]] = None) -> list[Path]:
    """Overlays for image files (``fgvc explain``)."""
    from .data.dataset import load_rgb

    written = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        crop = (crops or [0] * len(paths))[start:start + batch_size]
        images = torch.stack([transform(load_rgb(p, c)) for p, c in zip(chunk, crop)]).to(device)
        names = [f"{start + j:03d}_{Path(p).stem}" for j, p in enumerate(chunk)]
        written += explain_tensors(model, images, class_names, mean_std, out_dir, names)
    return written
