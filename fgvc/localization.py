"""How well what a method localizes matches annotated objects and parts (``fgvc localize RUN``).

For every evaluation image with a ground-truth object box (CUB, NABirds, Cars, Aircraft, Dogs with boxes,
the synthetic data), the method's ``explain`` output is compared with the annotations mapped into the
evaluation crop:

- each named box (RAMS-Trans proposals, WS-DAN crops): IoU with the object box, the fraction of the object
  box it covers, and the fraction of visible annotated parts it contains; beside each, the same figures
  for a box of the same size placed uniformly at random in the image (the chance level);
- each named heat map: the pointing accuracy (the map's maximum falls in the object box) and the share of
  the map's mass inside the object box, beside the box's share of the image (the chance level).

It is a benchmark, not a test: it reports, it asserts nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .run import Run


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1, 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1, 0, None)
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0] + 1) * (x[:, 3] - x[:, 1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter), inter / area(b)


def _inside(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``points [N, P, 3]`` (x, y, visible) inside ``boxes [N, 4]``: visible-weighted fraction per image."""
    x, y, v = points[..., 0], points[..., 1], points[..., 2] > 0
    inside = (x >= boxes[:, None, 0]) & (x <= boxes[:, None, 2]) & (y >= boxes[:, None, 1]) & (y <= boxes[:, None, 3])
    return np.where(v.sum(1) > 0, (inside & v).sum(1) / np.maximum(v.sum(1), 1), np.nan)


def box_metrics(pred: np.ndarray, gt: np.ndarray, parts: Optional[np.ndarray], size: int,
                draws: int = 10, seed: int = 0) -> dict[str, float]:
    """Means over images of IoU, coverage of the object box and parts inside, and the random-box baseline."""
    iou, cover = _iou(pred, gt)
    out = {"iou": float(np.mean(iou)), "object_covered": float(np.mean(cover)),
           "box_area_fraction": float(np.mean((pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)) / size ** 2)}
    if parts is not None:
        out["parts_inside"] = float(np.nanmean(_inside(parts, pred)))
    rng = np.random.default_rng(seed)
    w, h = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    rand_iou, rand_cover, rand_parts = [], [], []
    for _ in range(draws):
        x0 = rng.uniform(0, np.maximum(size - 1 - w, 0))
        y0 = rng.uniform(0, np.maximum(size - 1 - h, 0))
        rb = np.stack([x0, y0, x0 + w, y0 + h], 1)
        i, c = _iou(rb, gt)
        rand_iou.append(i.mean())
        rand_cover.append(c.mean())
        if parts is not None:
            rand_parts.append(np.nanmean(_inside(parts, rb)))
    out["random_iou"] = float(np.mean(rand_iou))
    out["random_object_covered"] = float(np.mean(rand_cover))
    if parts is not None:
        out["random_parts_inside"] = float(np.mean(rand_parts))
    return out


def map_metrics(maps: torch.Tensor, gt: np.ndarray, size: int) -> dict[str, float]:
    """Pointing accuracy and the map's mass inside the object box, with the box's share of the image."""
    m = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    m = m - m.flatten(1).min(1).values[:, None, None]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    g = torch.from_numpy(gt).float()
    inside = ((xs[None] >= g[:, 0, None, None]) & (xs[None] <= g[:, 2, None, None]) &
              (ys[None] >= g[:, 1, None, None]) & (ys[None] <= g[:, 3, None, None]))
    peak = m.flatten(1).argmax(1)
    pointing = inside.flatten(1).gather(1, peak[:, None])[:, 0].float()
    mass = (m * inside).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-12)
    return {"pointing": float(pointing.mean()), "mass_in_object": float(mass.mean()),
            "object_area_fraction": float(inside.float().flatten(1).mean(1).mean())}


@torch.no_grad()
def localization_report(path: Union[str, Path, "Run"], data_root: Optional[str] = None, split: str = "test",
                        device: str = "auto", batch_size: int = 32, limit: Optional[int] = None) -> dict[str, Any]:
    """Runs ``explain`` over a split and compares it with the annotated boxes and parts (see the module)."""
    from .arrays import as_numpy
    from .data.dataset import image_size
    from .errors import FgvcError
    from .run import Run, load_run

    run = path if isinstance(path, Run) else load_run(path, device)
    records = [r for r in run.records(split, data_root) if r.box is not None]
    if not records:
        raise FgvcError(f"no image of the '{split}' split has an object box; localization needs box annotations")
    records = records[:limit] if limit else records
    size = run.preprocess.img_size
    gts, parts_all, boxes, maps = [], [], {}, {}
    for batch in run.batches(records, batch_size, skip_unreadable=False):
        for r in batch.items:
            width, height = image_size(r.path, r.crop_bottom)
            sx, sy, ox, oy = run.preprocess.geometry(width, height)
            x, y, w, h = r.box
            gts.append([x * sx - ox, y * sy - oy, (x + w - 1) * sx - ox, (y + h - 1) * sy - oy])
            if r.parts is not None:
                p = r.parts.copy()
                p[:, 0], p[:, 1] = p[:, 0] * sx - ox, p[:, 1] * sy - oy
                p[:, 2] *= (p[:, 0] >= 0) & (p[:, 0] < size) & (p[:, 1] >= 0) & (p[:, 1] < size)
                parts_all.append(p)
        expl = run.model.explain(batch.images)
        for name, b in expl.boxes.items():
            if b.ndim == 2:
                boxes.setdefault(name, []).append(b.float().cpu())
        for name, m in expl.maps.items():
            maps.setdefault(name, []).append(m.float().cpu())
    gt = np.clip(np.array(gts, dtype=np.float64), 0, size - 1)
    parts = np.stack(parts_all) if len(parts_all) == len(records) else None
    report: dict[str, Any] = {"images": len(records), "split": split, "checkpoint": str(run.checkpoint),
                              "method": run.method, "boxes": {}, "maps": {}}
    for name, chunks in boxes.items():
        report["boxes"][name] = box_metrics(as_numpy(torch.cat(chunks)).astype(np.float64), gt, parts, size)
    for name, chunks in maps.items():
        report["maps"][name] = map_metrics(torch.cat(chunks), gt, size)
    return report
