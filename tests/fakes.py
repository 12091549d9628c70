"""Tiny fake copies of the official dataset layouts, written by the tests (real file names and formats).

The pattern of torchvision's ``DatasetTestCase.inject_fake_data``: a few small images per class, the
annotation files exactly as the official archives name and format them. Every writer returns what a
reader should find, so the tests compare against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy.io import savemat


def jpg(path: Path, size=(24, 20), colour=(120, 60, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)
    return path


def _lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(v) for v in r) + "\n" for r in rows))


def write_cub(root: Path, classes=3, per_class=4, with_extras=True) -> dict:
    """CUB_200_2011/: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, boxes, parts."""
    base = root / "CUB_200_2011"
    names = [f"{c + 1:03d}.Bird_{chr(65 + c)}" for c in range(classes)]
    images, labels, split, boxes, locs = [], [], [], [], []
    i = 0
    for c, name in enumerate(names):
        for k in range(per_class):
            i += 1
            rel = f"{name}/Bird_{chr(65 + c)}_{k:04d}_{i}.jpg"
            jpg(base / "images" / rel)
            images.append((i, rel))
            labels.append((i, c + 1))
            split.append((i, 1 if k < per_class // 2 else 0))
            boxes.append((i, 1.0, 2.0, 10.0, 8.0))
            for p in (1, 2):
                locs.append((i, p, 3.0 + p, 4.0, 1))
    _lines(base / "images.txt", images)
    _lines(base / "image_class_labels.txt", labels)
    _lines(base / "train_test_split.txt", split)
    _lines(base / "classes.txt", [(c + 1, n) for c, n in enumerate(names)])
    if with_extras:
        _lines(base / "bounding_boxes.txt", boxes)
        _lines(base / "parts" / "parts.txt", [(1, "back"), (2, "left eye")])
        _lines(base / "parts" / "part_locs.txt", locs)
    return {"base": base, "n": i, "classes": classes, "train": sum(s for _, s in split)}


def write_nabirds(root: Path) -> dict:
    """nabirds/: CUB-like files with UUID ids, non-contiguous leaf ids and hierarchy.txt."""
    base = root / "nabirds"
    nodes = {0: "Birds", 1: "Perching Birds", 295: "Northern Cardinal", 313: "Blue Jay", 1000: "Mallard"}
    parents = {1: 0, 295: 1, 313: 1, 1000: 0}
    leaves = [313, 1000, 295]
    images, labels, split = [], [], []
    n = 0
    for j, cid in enumerate(leaves):
        for k in range(3):
            n += 1
            uid = f"0000{j}{k}aa-bbbb-cccc-dddd-eeeeeeee{n:04d}"
            rel = f"{cid:04d}/{uid.replace('-', '')}.jpg"
            jpg(base / "images" / rel)
            images.append((uid, rel))
            labels.append((uid, cid))
            split.append((uid, int(k < 2)))
    _lines(base / "images.txt", images)
    _lines(base / "image_class_labels.txt", labels)
    _lines(base / "train_test_split.txt", split)
    _lines(base / "classes.txt", sorted(nodes.items()))
    _lines(base / "hierarchy.txt", sorted(parents.items()))
    return {"base": base, "n": n, "leaves": sorted(leaves), "names": nodes}


def _struct(rows: list[dict]) -> np.ndarray:
    keys = list(rows[0])
    arr = np.zeros((1, len(rows)), dtype=[(k, "O") for k in keys])
    for i, r in enumerate(rows):
        for k in keys:
            arr[0, i][k] = np.array([[r[k]]]) if not isinstance(r[k], str) else np.array([r[k]])
    return arr


def write_cars(root: Path, layout="A", labels_in_devkit=False, classes=3, per_class=2) -> dict:
    """Stanford Cars: layout A (cars_train/, cars_test/, devkit/*.mat) or B (car_ims/, cars_annos.mat)."""
    names = np.array([f"AM General Hummer SUV {2000 + c}" for c in range(classes)], dtype=object)
    if layout == "B":
        rows = []
        n = 0
        for c in range(classes):
            for k in range(per_class * 2):
                n += 1
                jpg(root / "car_ims" / f"{n:06d}.jpg")
                rows.append(dict(relative_im_path=f"car_ims/{n:06d}.jpg", bbox_x1=1, bbox_y1=2, bbox_x2=10,
                                 bbox_y2=12, **{"class": c + 1}, test=int(k >= per_class)))
        savemat(root / "cars_annos.mat", {"annotations": _struct(rows), "class_names": names[None]})
        return {"n": n, "classes": classes, "test": n // 2}
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": names[None]})
    total = 0
    for split in ("train", "test"):
        rows = []
        for c in range(classes):
            for k in range(per_class):
                total += 1
                fname = f"{total:05d}.jpg"
                jpg(root / f"cars_{split}" / fname)
                rows.append(dict(bbox_x1=1, bbox_y1=2, bbox_x2=10, bbox_y2=12, **{"class": c + 1}, fname=fname))
        if split == "train":
            savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _struct(rows)})
        else:
            target = root / "devkit" if labels_in_devkit else root
            savemat(target / "cars_test_annos_withlabels.mat", {"annotations": _struct(rows)})
    return {"n": total, "classes": classes, "test": total // 2}


def write_dogs(root: Path) -> dict:
    """Stanford Dogs: Images/nXXXX-Name/, train_list.mat, test_list.mat, Annotation/ XML."""
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    lists = {"train": [], "test": []}
    for label, folder in enumerate(folders, 1):
        for k in range(4):
            name = f"{folder.split('-')[0]}_{100 + k}"
            jpg(root / "Images" / folder / f"{name}.jpg")
            ann = root / "Annotation" / folder / name
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(f"<annotation><object><name>{folder}</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
                           f"<xmax>12</xmax><ymax>15</ymax></bndbox></object></annotation>")
            lists["train" if k < 3 else "test"].append((f"{folder}/{name}.jpg", label))
    for split, rows in lists.items():
        savemat(root / f"{split}_list.mat", {
            "file_list": np.array([[r[0]] for r in rows], dtype=object),
            "annotation_list": np.array([[r[0][:-4]] for r in rows], dtype=object),
            "labels": np.array([[r[1]] for r in rows], dtype=float)})
    return {"train": len(lists["train"]), "test": len(lists["test"]), "names": ["Chihuahua", "Japanese_spaniel"]}


def write_aircraft(root: Path) -> dict:
    """fgvc-aircraft-2013b/data/: images/<id>.jpg, variants/families/manufacturers, images_<level>_<split>.txt."""
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    family = {"707-320": "Boeing 707", "A300B4": "A300", "Cessna 172": "Cessna 172"}
    maker = {"707-320": "Boeing", "A300B4": "Airbus", "Cessna 172": "Cessna"}
    (data / "variants.txt").parent.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    (data / "families.txt").write_text("\n".join(dict.fromkeys(family.values())) + "\n")
    (data / "manufacturers.txt").write_text("\n".join(dict.fromkeys(maker.values())) + "\n")
    rows = {s: [] for s in ("train", "val", "test")}
    n = 1000000
    box = []
    for v in variants:
        for s in ("train", "val", "test"):
            n += 1
            jpg(data / "images" / f"{n}.jpg", size=(40, 50))
            rows[s].append((n, v))
            box.append((n, 1, 2, 30, 25))
    for level, m in (("variant", None), ("family", family), ("manufacturer", maker)):
        for s, r in rows.items():
            _lines(data / f"images_{level}_{s}.txt", [(i, m[v] if m else v) for i, v in r])
    _lines(data / "images_box.txt", box)
    return {"data": data, "per_split": len(variants)}


def write_flowers(root: Path) -> dict:
    """jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat."""
    labels = np.array([[1, 1, 2, 2, 3, 3, 1, 2, 3]])
    for n in range(1, labels.size + 1):
        jpg(root / "jpg" / f"image_{n:05d}.jpg")
    savemat(root / "imagelabels.mat", {"labels": labels})
    savemat(root / "setid.mat", {"trnid": np.array([[1, 3, 5]]), "valid": np.array([[2, 4, 6]]),
                                 "tstid": np.array([[7, 8, 9]])})
    return {"n": labels.size}


def write_pets(root: Path) -> dict:
    """images/<Name>_<n>.jpg, annotations/trainval.txt, annotations/test.txt."""
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("great_pyrenees", 3, 2)]
    rows = {"trainval": [], "test": []}
    for name, cid, species in breeds:
        for k in range(1, 4):
            jpg(root / "images" / f"{name}_{k}.jpg")
            rows["trainval" if k < 3 else "test"].append(f"{name}_{k} {cid} {species} {cid}")
    for split, r in rows.items():
        p = root / "annotations" / f"{split}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n" + "\n".join(r) + "\n")
    return {"trainval": len(rows["trainval"]), "test": len(rows["test"]), "names": [b[0] for b in breeds]}


def write_inat(root: Path, version="2017") -> dict:
    """COCO-like train/val JSON of iNaturalist 2017, 2018 or 2021."""
    names = {"2017": ("train2017.json", "val2017.json", "train_val_images"),
             "2018": ("train2018.json", "val2018.json", "train_val2018"),
             "2021": ("train.json", "val.json", "train")}[version]
    cats = [{"id": 7, "name": "Aves sp. a", "supercategory": "Aves"}, {"id": 3, "name": "Plantae sp. b",
                                                                        "supercategory": "Plantae"}]
    if version == "2021":
        for c in cats:
            c.update(kingdom="Animalia", genus="Genus")
    img_id = 0
    for fname, per in ((names[0], 3), (names[1], 1)):
        images, anns = [], []
        for c in cats:
            for k in range(per):
                img_id += 1
                rel = f"{names[2]}/{c['supercategory']}/{c['id']}/{img_id}.jpg"
                jpg(root / rel)
                images.append({"id": img_id, "file_name": rel, "width": 24, "height": 20})
                anns.append({"id": img_id, "image_id": img_id, "category_id": c["id"]})
        (root / fname).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"train": 6, "val": 2, "names": ["Plantae sp. b", "Aves sp. a"]}


def write_folder(root: Path, splits=("train", "test"), classes=("cat", "dog")) -> dict:
    n = 0
    for s in splits:
        for c in classes:
            for k in range(3):
                jpg(root / s / c / f"{k}.png" if k == 0 else root / s / c / f"{k}.jpg")
                n += 1
    return {"n": n}


def write_google_vit_npz(path: Path, model, grid: int, num_classes: int = 21843, seed: int = 0) -> dict:
    """Random weights shaped like ``model`` (a timm ViT) in the Google/JAX ``ViT-B_16.npz`` layout.

    Kernels are HWIO / (in, out); attention kernels are (D, heads, head_dim) and (heads, head_dim, D);
    LayerNorm weights are named ``scale``; the position grid is ``grid x grid`` (+1 for the class token).
    """
    rng = np.random.default_rng(seed)
    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    hd = d // heads
    p = model.patch_embed.proj.kernel_size[0]
    mlp = model.blocks[0].mlp.fc1.out_features
    r = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.02  # noqa: E731
    w = {"embedding/kernel": r(p, p, 3, d), "embedding/bias": r(d), "cls": r(1, 1, d),
         "Transformer/posembed_input/pos_embedding": r(1, grid * grid + 1, d),
         "Transformer/encoder_norm/scale": 1 + r(d), "Transformer/encoder_norm/bias": r(d),
         "head/kernel": r(d, num_classes), "head/bias": r(num_classes)}
    for i in range(len(model.blocks)):
        b = f"Transformer/encoderblock_{i}/"
        m = b + "MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            w[f"{m}{n}/kernel"], w[f"{m}{n}/bias"] = r(d, heads, hd), r(heads, hd)
        w[f"{m}out/kernel"], w[f"{m}out/bias"] = r(heads, hd, d), r(d)
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            w[f"{b}{ln}/scale"], w[f"{b}{ln}/bias"] = 1 + r(d), r(d)
        w[f"{b}MlpBlock_3/Dense_0/kernel"], w[f"{b}MlpBlock_3/Dense_0/bias"] = r(d, mlp), r(mlp)
        w[f"{b}MlpBlock_3/Dense_1/kernel"], w[f"{b}MlpBlock_3/Dense_1/bias"] = r(mlp, d), r(d)
    np.savez(path, **w)
    return w


def write_csv(root: Path) -> dict:
    """list.csv: path,label,split with a header, paths relative to the file."""
    rows = [("img/0.jpg", "heron", "train"), ("img/1.jpg", "egret", "train"), ("img/2.jpg", "heron", "test"),
            ("img/3.jpg", "egret", "test")]
    for path, _, _ in rows:
        jpg(root / path)
    (root / "list.csv").write_text("path,label,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    return {"n": len(rows)}


# ---------------------------------------------------------------------------------------------------
# The enrolment: every registered reader (by its function) has a fake in its official layout here, with the
# option grid it is read under and what reading it must give. tests/test_readers.py fails for a reader
# that is registered without one.

@dataclass
class Fake:
    """A fake dataset writer and, per option set, the expected classes and images per split."""

    write: Callable[..., dict]
    cases: list  # [(writer kwargs, reader options, classes, {split: images})]


AIRCRAFT_CLASSES = {"variant": 3, "family": 3, "manufacturer": 3}
FAKES: dict[str, Fake] = {
    "cub": Fake(write_cub, [({}, {}, 3, {"train": 6, "test": 6})]),
    "nabirds": Fake(write_nabirds, [({}, {}, 3, None)]),
    "cars": Fake(write_cars, [({"layout": layout, "labels_in_devkit": devkit}, {}, 3, {"train": 6, "test": 6})
                              for layout in ("A", "B") for devkit in (False, True)]),
    "dogs": Fake(write_dogs, [({}, {}, 2, None), ({}, {"boxes": True}, 2, None)]),
    "aircraft": Fake(write_aircraft, [({}, {"level": level}, AIRCRAFT_CLASSES[level],
                                       {"train": 3, "val": 3, "test": 3}) for level in AIRCRAFT_CLASSES]),
    "flowers": Fake(write_flowers, [({}, {}, 3, {"train": 3, "val": 3, "test": 3})]),
    "pets": Fake(write_pets, [({}, {}, 3, {"trainval": 6, "test": 3})]),
    "inat": Fake(write_inat, [({"version": v}, {"version": v}, 2, {"train": 6, "val": 2})
                              for v in ("2017", "2018", "2021")]
                 + [({"version": "2018"}, {}, 2, {"train": 6, "val": 2})]),  # version auto
    "folder": Fake(write_folder, [({}, {}, 2, {"train": 6, "test": 6}),
                                  ({"splits": ("train", "val")}, {}, 2, {"train": 6, "val": 6})]),
    "csv": Fake(write_csv, [({}, {}, 2, {"train": 2, "test": 2})]),
}
