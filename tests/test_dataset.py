"""Decoding, RGB conversion, the bad-file policy and reproducible per-sample augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fgvc.config import DataConfig
from fgvc.data.dataset import ImageDataset, check_images, load_rgb
from fgvc.data.index import stratified_split
from fgvc.data.record import Record
from fgvc.data.transforms import Preprocess, build_train_transform
from fgvc.errors import DataError

from fakes import jpg


def make_images(folder: Path) -> dict[str, Path]:
    """Good images in awkward modes and three broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    good = {}
    good["rgb"] = jpg(folder / "rgb.jpg", size=(30, 20))
    good["gray"] = jpg(folder / "gray.jpg", size=(30, 20), mode="L")
    good["cmyk"] = jpg(folder / "cmyk.jpg", size=(30, 20), mode="CMYK")
    rgba = Image.new("RGBA", (30, 20), (10, 200, 30, 128))
    rgba.save(folder / "rgba.png")
    good["rgba"] = folder / "rgba.png"
    Image.new("P", (30, 20)).save(folder / "palette.png")
    good["palette"] = folder / "palette.png"
    bad = {}
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty"] = folder / "empty.jpg"
    full = (folder / "rgb.jpg").read_bytes()
    big = folder / "big.jpg"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(big)
    (folder / "truncated.jpg").write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])
    big.unlink()
    bad["truncated"] = folder / "truncated.jpg"
    (folder / "text.jpg").write_text("this is not an image\n")
    bad["text"] = folder / "text.jpg"
    assert full
    return {"good": good, "bad": bad}


def test_every_mode_becomes_rgb(tmp_path):
    files = make_images(tmp_path)
    for name, p in files["good"].items():
        im = load_rgb(str(p))
        assert im.mode == "RGB" and im.size == (30, 20), name
    # RGBA is composited over white, not left with garbage in the transparent part
    px = np.asarray(load_rgb(str(files["good"]["rgba"])))[0, 0]
    assert px[1] > 150 and px[0] > 100


def test_check_images_lists_exactly_the_bad_files(tmp_path):
    files = make_images(tmp_path)
    paths = list(files["good"].values()) + list(files["bad"].values())
    records = [Record(path=str(p), label=0, split="train") for p in paths]
    bad = check_images(records, workers=2)
    assert sorted(Path(p).name for _, p, _ in bad) == sorted(p.name for p in files["bad"].values())


def test_raise_policy_names_path_and_index(tmp_path):
    files = make_images(tmp_path)
    records = [Record(path=str(files["good"]["rgb"]), label=0, split="train"),
               Record(path=str(files["bad"]["truncated"]), label=1, split="train")]
    tf = Preprocess.from_config(DataConfig(img_size=16, resize=18), (0.5,) * 3, (0.5,) * 3).transform()
    ds = ImageDataset(records, tf)
    with pytest.raises(DataError, match=r"truncated.jpg \(dataset index 1\)"):
        ds[1]


def test_skip_policy_replaces_and_reports(tmp_path):
    files = make_images(tmp_path)
    records = [Record(path=str(files["bad"]["empty"]), label=0, split="train"),
               Record(path=str(files["good"]["gray"]), label=1, split="train")]
    tf = Preprocess.from_config(DataConfig(img_size=16, resize=18), (0.5,) * 3, (0.5,) * 3).transform()
    ds = ImageDataset(records, tf,
                      bad_data="skip")
    img, label, index, bad = ds[0]
    assert (label, index, bad) == (1, 1, 0) and img.shape == (3, 16, 16)
    assert ds[1][3] == -1


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    p = jpg(tmp_path / "a.jpg", size=(60, 50), colour=(10, 100, 200))
    arr = (np.random.default_rng(1).random((50, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(p)
    cfg = DataConfig(img_size=24, resize=40, hflip=True, color_jitter=[0.3, 0.3, 0.3])
    ds = ImageDataset([Record(path=str(p), label=0, split="train")] * 4, build_train_transform(cfg, (0,) * 3, (1,) * 3),
                      seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(2, 5)][0]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
    torch.manual_seed(123)
    assert torch.equal(ds[(2, 5)][0], a)  # whatever the global state
    assert not torch.equal(ds[(2, 6)][0], a) or not torch.equal(ds[(3, 5)][0], a)


def test_stratified_split_is_seeded_and_stratified():
    records = [Record(path=f"{i}", label=i % 3, split="train") for i in range(30)]
    tr1, va1 = stratified_split(records, 0.2, seed=0)
    tr2, va2 = stratified_split(records, 0.2, seed=0)
    _, va3 = stratified_split(records, 0.2, seed=1)
    assert (tr1, va1) == (tr2, va2) and va1 != va3
    assert sorted(tr1 + va1) == list(range(30))
    assert [sum(records[i].label == c for i in va1) for c in range(3)] == [2, 2, 2]


def test_eval_geometry_maps_points_into_the_crop():
    pre = Preprocess.from_config(DataConfig(img_size=100, resize=120), (0.5,) * 3, (0.5,) * 3)
    sx, sy, ox, oy = pre.geometry(240, 480)
    assert (sx, sy, ox, oy) == (0.5, 0.25, 10.0, 10.0)
    # the centre of the original image lands on the centre of the crop
    assert (120 * sx - ox, 240 * sy - oy) == (50.0, 50.0)


@pytest.mark.parametrize("mode,size", [("square", (150, 97)), ("shorter", (151, 97)), ("shorter", (97, 151))])
def test_eval_geometry_is_where_the_eval_transform_puts_a_pixel(mode, size):
    """The geometry and the transform come from one Preprocess: a bright dot lands where the geometry says."""
    pre = Preprocess(img_size=48, resize=60, resize_mode=mode, mean=(0.0,) * 3, std=(1.0,) * 3)
    w, h = size
    for x, y in ((w // 2, h // 2), (w // 2 + 9, h // 2 - 7)):
        img = np.zeros((h, w, 3), np.uint8)
        img[y - 2:y + 3, x - 2:x + 3] = 255
        out = pre.transform()(Image.fromarray(img))[0]
        sx, sy, ox, oy = pre.geometry(w, h)
        weights = out / out.sum()
        cy = float((weights.sum(1) * torch.arange(48)).sum())
        cx = float((weights.sum(0) * torch.arange(48)).sum())
        # pixel centres: (x + 0.5) * s - 0.5 in the resized image, then the crop offset
        assert abs(cx - ((x + 0.5) * sx - 0.5 - ox)) < 0.35 and abs(cy - ((y + 0.5) * sy - 0.5 - oy)) < 0.35
