"""The built-in synthetic fine-grained data: deterministic, part-defined classes, CUB layout, speed."""

from __future__ import annotations

import numpy as np
import pytest

from fgvc.data import open_dataset
from fgvc.data.synthetic import MAX_CLASSES, PART_NAMES, sample, species_list, write_cub_layout


def test_deterministic_by_seed_and_index():
    a = np.asarray(sample(3, 1, 5, 64, num_classes=4).image)
    b = np.asarray(sample(3, 1, 5, 64, num_classes=4).image)
    c = np.asarray(sample(4, 1, 5, 64, num_classes=4).image)
    assert (a == b).all() and not (a == c).all()


def test_classes_differ_only_in_part_attributes():
    species = species_list(MAX_CLASSES)
    assert len(set(species)) == MAX_CLASSES  # every class is a distinct combination
    fields = ("beak", "bill", "crown", "bar", "ring", "tail")
    for s in species[:50]:
        assert all(getattr(s, f) for f in fields)
    assert species_list(5) == species[:5]  # class c is the same species whatever K is
    with pytest.raises(ValueError):
        species_list(MAX_CLASSES + 1)


def test_ground_truth_box_contains_parts_and_parts_hold_their_colour():
    s = sample(0, 0, 0, 128, num_classes=1)
    x, y, w, h = s.box
    assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w > 20 and h > 10
    assert s.parts.shape == (len(PART_NAMES), 3)
    for px, py, vis in s.parts:
        if vis:
            assert x - 1 <= px <= x + w + 1 and y - 1 <= py <= y + h + 1
    # The pixel at the beak keypoint is the class's beak colour (up to jitter and noise).
    from fgvc.data.synthetic import _BEAK

    sp = species_list(1)[0]
    bx, by, _ = s.parts[0]
    rgb = np.asarray(s.image, dtype=float)[int(round(by)), int(round(bx))]
    target = np.array(_BEAK[sp.beak], dtype=float)
    others = [np.array(v, float) for k, v in _BEAK.items() if k != sp.beak]
    assert np.linalg.norm(rgb - target) < min(np.linalg.norm(rgb - o) for o in others)


def test_written_in_cub_layout_and_read_back(tmp_path):
    root = write_cub_layout(tmp_path / "s", classes=3, train_per_class=4, test_per_class=2, size=40, seed=0)
    for f in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "bounding_boxes.txt",
              "parts/parts.txt", "parts/part_locs.txt"):
        assert (root / f).is_file(), f
    index = open_dataset("cub", root)
    assert index.num_classes == 3 and len(index.records) == 18
    assert sum(r.split == "train" for r in index.records) == 12
    assert index.part_names == PART_NAMES
    assert all(r.box is not None and r.parts.shape == (5, 3) for r in index.records)
    assert index.class_names[0] == species_list(1)[0].name
