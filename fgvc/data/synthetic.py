"""Built-in synthetic fine-grained data: procedurally drawn birds whose species differ only in small parts.

Every class shares one object structure (body, wing, head, eye, beak, tail, legs). A class is a
combination of six small part attributes: beak colour, beak length, crown colour, wing-bar colour,
eye ring and tail-tip colour (4 x 2 x 4 x 3 x 2 x 3 = 576 possible classes). Everything else is a nuisance
drawn at random per image: body colour, pose (rotation, mirroring), scale, position, a cluttered
background of muted shapes, global colour jitter and noise. Telling two classes apart therefore means
finding a small part and reading its colour, which is what fine-grained methods are for.

Each image is a pure function of ``(seed, class, index)``; the ground truth of the object box and of five
part locations comes with it. :func:`write_cub_layout` writes a dataset in the CUB-200-2011 layout so that
the real reader path is exercised, and :func:`ensure_synthetic` caches one for the demo and the tests.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

PART_NAMES = ["beak", "crown", "eye", "wing bar", "tail tip"]

_BEAK = {"orange": (235, 135, 20), "black": (25, 25, 25), "red": (205, 30, 35), "yellow": (240, 215, 40)}
_BEAK_LENGTH = {"short": 0.13, "long": 0.24}
_CROWN = {"plain": None, "red": (215, 35, 45), "blue": (40, 85, 225), "white": (245, 245, 245)}
_WING_BAR = {"plain": None, "white": (245, 245, 245), "black": (20, 20, 20)}
_EYE_RING = {"plain": None, "ringed": (250, 230, 60)}
_TAIL_TIP = {"plain": None, "white": (245, 245, 245), "orange": (235, 120, 25)}
_ATTRIBUTES = [("beak", _BEAK), ("bill", _BEAK_LENGTH), ("crown", _CROWN), ("bar", _WING_BAR),
               ("ring", _EYE_RING), ("tail", _TAIL_TIP)]
MAX_CLASSES = math.prod(len(v) for _, v in _ATTRIBUTES)


@dataclass(frozen=True)
class Species:
    """The part attributes that define one synthetic class."""

    beak: str
    bill: str
    crown: str
    bar: str
    ring: str
    tail: str

    @property
    def name(self) -> str:
        words = [self.beak.capitalize(), self.bill.capitalize() + "billed"]
        for attr, word in ((self.crown, "Crowned"), (self.bar, "Barred"), (self.tail, "Tipped")):
            if attr != "plain":
                words.append(attr.capitalize() + "_" + word)
        if self.ring != "plain":
            words.append("Ringed")
        return "_".join(words)


def species_list(num_classes: int) -> list[Species]:
    """The first ``num_classes`` of a fixed shuffle of all attribute combinations.

    The shuffle does not depend on the data seed, so class ``c`` means the same species in every dataset.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"the synthetic data has between 1 and {MAX_CLASSES} classes, got {num_classes}")
    combos = list(itertools.product(*[list(v) for _, v in _ATTRIBUTES]))
    order = np.random.default_rng(20240601).permutation(len(combos))
    return [Species(*combos[i]) for i in order[:num_classes]]


@dataclass
class SyntheticSample:
    """One rendered image and its ground truth (pixel coordinates)."""

    image: Image.Image
    label: int
    box: tuple[float, float, float, float]  # x, y, w, h of the whole bird
    parts: np.ndarray  # [5, 3]: x, y, visible for PART_NAMES


def _muted(rng: np.random.Generator, sat: float = 0.35) -> tuple[int, int, int]:
    """A random colour of low saturation: backgrounds, clutter and bodies never look like the parts."""
    grey = rng.uniform(60, 200)
    tint = rng.normal(0, sat * 45, 3)
    return tuple(int(np.clip(grey + t, 0, 255)) for t in tint)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def render(species: Species, rng: np.random.Generator, size: int, label: int = 0) -> SyntheticSample:
    """Draws one bird of ``species`` on a cluttered background.

    Args:
        species: The part attributes of the class.
        rng: The random source of every nuisance factor.
        size: Square image size in pixels.
        label: Stored in the returned sample.
    """
    img = Image.new("RGB", (size, size), _muted(rng, 0.5))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):  # background clutter: muted ellipses, bars and lines
        c = _muted(rng, 0.5)
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        w, h = rng.uniform(0.05, 0.35, 2) * size
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=c)
        elif kind == 1:
            draw.polygon([tuple(p) for p in _ellipse(x, y, w / 2, h / 8, 4)], fill=c)
        else:
            draw.line([x, y, x + rng.uniform(-1, 1) * w, y + rng.uniform(-1, 1) * h], fill=c,
                      width=max(1, int(size * 0.02)))

    # The bird in its own frame: unit = body length; x points to the beak, y down.
    body = _muted(rng, 0.6)
    wing = tuple(int(v * 0.72) for v in body)
    beak_len = _BEAK_LENGTH[species.bill]
    shapes = [  # (polygon, colour) in drawing order
        (np.array([[0.0, 0.22], [0.02, 0.44], [0.04, 0.22], [0.12, 0.22], [0.14, 0.44], [0.16, 0.22]]), (60, 50, 40)),
        (np.array([[-0.42, -0.02], [-0.82, -0.14], [-0.82, 0.12]]), wing),
        (_ellipse(0.0, 0.0, 0.5, 0.27), body),
        (_ellipse(-0.05, -0.03, 0.3, 0.14), wing),
        (_ellipse(0.5, -0.22, 0.18, 0.17), body),
        (np.array([[0.63, -0.28], [0.63 + beak_len, -0.21], [0.63, -0.15]]), _BEAK[species.beak]),
    ]
    if _TAIL_TIP[species.tail]:
        shapes.insert(2, (np.array([[-0.68, -0.09], [-0.84, -0.145], [-0.84, 0.125], [-0.68, 0.07]]),
                          _TAIL_TIP[species.tail]))
    if _WING_BAR[species.bar]:
        shapes.append((np.array([[-0.12, -0.16], [-0.04, -0.16], [0.0, 0.1], [-0.08, 0.1]]), _WING_BAR[species.bar]))
    if _CROWN[species.crown]:
        shapes.append((_ellipse(0.47, -0.35, 0.13, 0.065, 12), _CROWN[species.crown]))
    if _EYE_RING[species.ring]:
        shapes.append((_ellipse(0.56, -0.25, 0.065, 0.065, 10), _EYE_RING[species.ring]))
    shapes.append((_ellipse(0.56, -0.25, 0.035, 0.035, 8), (10, 10, 10)))
    keypoints = np.array([[0.63 + beak_len * 0.6, -0.215], [0.47, -0.35], [0.56, -0.25], [-0.06, -0.03],
                          [-0.8, -0.01]])

    # Pose: scale, rotation, mirror, then a position that keeps the bird (mostly) in the frame.
    scale = rng.uniform(0.42, 0.7) * size
    angle = rng.uniform(-0.5, 0.5)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def pose(p: np.ndarray) -> np.ndarray:
        return (p * [mirror, 1.0]) @ rot.T * scale

    all_pts = pose(np.concatenate([s for s, _ in shapes]))
    lo, hi = all_pts.min(0), all_pts.max(0)
    margin = 0.02 * size
    shift = np.array([rng.uniform(margin - lo[i], max(margin - lo[i], size - margin - hi[i])) for i in range(2)])
    for poly, colour in shapes:
        draw.polygon([tuple(p) for p in pose(poly) + shift], fill=colour)

    # Photometric nuisance: per-channel gain, brightness, noise.
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * rng.uniform(0.88, 1.12, 3) + rng.uniform(-18, 18)
    arr += rng.normal(0, 4.0, arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    x0, y0 = np.clip(lo + shift, 0, size)
    x1, y1 = np.clip(hi + shift, 0, size)
    kp = pose(keypoints) + shift
    visible = ((kp >= 0) & (kp < size)).all(1).astype(np.float32)
    parts = np.concatenate([kp, visible[:, None]], 1).astype(np.float32)
    return SyntheticSample(img, label, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), parts)


def sample(seed: int, label: int, index: int, size: int, species: Optional[list[Species]] = None,
           num_classes: Optional[int] = None) -> SyntheticSample:
    """The ``index``-th image of class ``label``: a pure function of its arguments."""
    species = species or species_list(num_classes or label + 1)
    return render(species[label], np.random.default_rng([seed, label, index]), size, label)


def write_cub_layout(out: str | Path, classes: int = 10, train_per_class: int = 40, test_per_class: int = 20,
                     size: int = 128, seed: int = 0, progress: bool = False) -> Path:
    """Writes a synthetic dataset in the CUB-200-2011 layout.

    Files: ``images/NNN.Name/Name_XXXX.jpg``, ``images.txt``, ``image_class_labels.txt``,
    ``train_test_split.txt``, ``classes.txt``, ``bounding_boxes.txt``, ``parts/parts.txt``,
    ``parts/part_locs.txt`` and ``synthetic.json`` (the generator's parameters).

    Returns:
        The dataset root.
    """
    out = Path(out)
    species = species_list(classes)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "parts")}
    image_id = 0
    per_class = train_per_class + test_per_class
    iterator = range(classes)
    if progress:
        from ..progress import on_terminal, progress_bar

        if not on_terminal():
            print(f"generating the synthetic data: {classes} classes, {per_class} images each", flush=True)
        iterator = progress_bar(iterator, desc="synthetic data", unit="class")
    for c in iterator:
        folder = f"{c + 1:03d}.{species[c].name}"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = sample(seed, c, i, size, species)
            image_id += 1
            rel = f"{folder}/{species[c].name}_{i + 1:04d}.jpg"
            s.image.save(out / "images" / rel, quality=92)
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c + 1}")
            lines["split"].append(f"{image_id} {1 if i < train_per_class else 0}")
            lines["boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in s.box))
            for p, (x, y, v) in enumerate(s.parts):
                lines["parts"].append(f"{image_id} {p + 1} {x:.1f} {y:.1f} {int(v)}")
    files = {"images.txt": "images", "image_class_labels.txt": "labels", "train_test_split.txt": "split",
             "bounding_boxes.txt": "boxes", "parts/part_locs.txt": "parts"}
    for fname, key in files.items():
        (out / fname).write_text("\n".join(lines[key]) + "\n")
    (out / "classes.txt").write_text("".join(f"{c + 1} {c + 1:03d}.{s.name}\n" for c, s in enumerate(species)))
    (out / "parts/parts.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(PART_NAMES)))
    params = dict(classes=classes, train_per_class=train_per_class, test_per_class=test_per_class, size=size,
                  seed=seed, generator="fgvc.data.synthetic/1")
    (out / "synthetic.json").write_text(json.dumps(params, indent=1))
    return out


def cache_dir() -> Path:
    """Where generated datasets are cached: ``$FGVC_CACHE`` or ``~/.cache/fgvc``."""
    return Path(os.environ.get("FGVC_CACHE", Path.home() / ".cache" / "fgvc"))


def ensure_synthetic(classes: int = 10, train_per_class: int = 40, test_per_class: int = 20, size: int = 128,
                     seed: int = 0, progress: bool = False) -> Path:
    """The cached synthetic dataset for these parameters, generated once (atomically) if absent."""
    params = dict(classes=classes, train_per_class=train_per_class, test_per_class=test_per_class, size=size,
                  seed=seed)
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir() / "synthetic" / f"k{classes}-n{train_per_class}+{test_per_class}-s{size}-seed{seed}-{key}"
    if (root / "synthetic.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
    try:
        write_cub_layout(tmp, progress=progress, **params)
        try:
            os.replace(tmp, root)  # another process may have won the race; its copy is identical
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
