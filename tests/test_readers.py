"""Every reader on a fake copy of its official layout, and the annotation faults each must catch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from fgvc.data import open_dataset
from fgvc.errors import ConfigError, DataError

from fakes import (jpg, write_aircraft, write_cars, write_cub, write_dogs, write_flowers, write_folder,
                   write_inat, write_nabirds, write_pets)


def splits(index):
    return Counter(r.split for r in index.records)


# --- CUB-200-2011 ------------------------------------------------------------------------------------

def test_cub_reads_labels_splits_boxes_parts(tmp_path):
    info = write_cub(tmp_path)
    for root in (tmp_path, info["base"]):  # the archive's parent or the dataset folder itself
        index = open_dataset("cub", root)
        assert index.num_classes == 3 and len(index.records) == info["n"]
    assert index.class_names == ["Bird_A", "Bird_B", "Bird_C"]
    assert splits(index) == {"train": info["train"], "test": info["n"] - info["train"]}
    assert sorted({r.label for r in index.records}) == [0, 1, 2]
    r = index.records[0]
    assert r.box == (1.0, 2.0, 10.0, 8.0)
    assert index.part_names == ["back", "left eye"]
    assert r.parts.shape == (2, 3) and r.parts[1].tolist() == [5.0, 4.0, 1.0]
    assert Path(r.path).is_file()


def test_cub_label_out_of_range_names_file_and_line(tmp_path):
    info = write_cub(tmp_path)
    p = info["base"] / "image_class_labels.txt"
    lines = p.read_text().splitlines()
    lines[4] = "5 201"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"image_class_labels.txt:5: class 201 .*out of range"):
        open_dataset("cub", tmp_path)


def test_cub_missing_id_duplicate_id_and_missing_image(tmp_path):
    info = write_cub(tmp_path)
    base = info["base"]
    split = base / "train_test_split.txt"
    original = split.read_text()
    split.write_text("\n".join(original.splitlines()[:-1]) + "\n")
    with pytest.raises(DataError, match=rf"images.txt:{info['n']}: image id {info['n']} is missing from .*train_test_split"):
        open_dataset("cub", tmp_path)
    split.write_text(original + "3 1\n")
    with pytest.raises(DataError, match=r"train_test_split.txt:\d+: id 3 is listed twice"):
        open_dataset("cub", tmp_path)
    split.write_text(original)
    first = (base / "images.txt").read_text().splitlines()[0].split()[1]
    (base / "images" / first).unlink()
    with pytest.raises(DataError, match=r"images.txt:1: image .* is listed but not on disk"):
        open_dataset("cub", tmp_path)


def test_cub_malformed_line_and_missing_root(tmp_path):
    info = write_cub(tmp_path)
    (info["base"] / "train_test_split.txt").write_text("1 x\n")
    with pytest.raises(DataError, match=r"train_test_split.txt:1: train flag 'x' is not a valid int"):
        open_dataset("cub", tmp_path)
    with pytest.raises(DataError, match="dataset root not found"):
        open_dataset("cub", tmp_path / "nowhere")
    with pytest.raises(DataError, match="does not look like this dataset"):
        open_dataset("cub", tmp_path / "CUB_200_2011" / "images")


# --- NABirds ------------------------------------------------------------------------------------------

def test_nabirds_remaps_sparse_ids_and_keeps_hierarchy(tmp_path):
    info = write_nabirds(tmp_path)
    index = open_dataset("nabirds", tmp_path)
    assert index.class_ids == [str(c) for c in info["leaves"]]  # 295, 313, 1000 -> 0, 1, 2
    assert index.class_names == ["Northern Cardinal", "Blue Jay", "Mallard"]
    jay = next(r for r in index.records if r.label == 1)
    assert jay.extra["ancestors"] == ["Perching Birds", "Birds"]
    assert splits(index) == {"train": 6, "test": 3}


# --- Stanford Cars ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout,in_devkit", [("A", False), ("A", True), ("B", False)])
def test_cars_layouts(tmp_path, layout, in_devkit):
    info = write_cars(tmp_path, layout=layout, labels_in_devkit=in_devkit)
    index = open_dataset("cars", tmp_path)
    assert index.num_classes == info["classes"]
    assert len(index.records) == info["n"] and splits(index)["test"] == info["test"]
    assert index.class_names[0] == "AM General Hummer SUV 2000"
    assert index.records[0].box == (1.0, 2.0, 10.0, 11.0)  # inclusive corners -> width, height
    assert sorted({r.label for r in index.records}) == list(range(info["classes"]))


def test_cars_mirror_without_annotations_is_explained(tmp_path):
    jpg(tmp_path / "car_data" / "train" / "Audi" / "00001.jpg")
    with pytest.raises(DataError, match="mirror .* data.dataset=folder"):
        open_dataset("cars", tmp_path)


def test_cars_renamed_files_are_detected(tmp_path):
    write_cars(tmp_path, layout="A")
    for d in ("cars_train", "cars_test"):
        for p in (tmp_path / d).iterdir():
            p.rename(p.with_name("renamed_" + p.name))
    with pytest.raises(DataError, match="rename the files"):
        open_dataset("cars", tmp_path)


def test_cars_class_out_of_range(tmp_path):
    write_cars(tmp_path, layout="B")
    from scipy.io import loadmat

    mat = loadmat(tmp_path / "cars_annos.mat")
    mat["annotations"][0, 0]["class"] = np.array([[9]])
    savemat(tmp_path / "cars_annos.mat", {"annotations": mat["annotations"], "class_names": mat["class_names"]})
    with pytest.raises(DataError, match="class 9 out of range 1..3"):
        open_dataset("cars", tmp_path)


# --- Stanford Dogs ------------------------------------------------------------------------------------------

def test_dogs_lists_names_and_boxes(tmp_path):
    info = write_dogs(tmp_path)
    index = open_dataset("dogs", tmp_path, boxes=True)
    assert index.class_names == info["names"] and index.class_ids == ["n02085620", "n02085782"]
    assert splits(index) == {"train": info["train"], "test": info["test"]}
    assert index.records[0].box == (2.0, 3.0, 10.0, 12.0)
    assert open_dataset("dogs", tmp_path).records[0].box is None  # boxes are opt-in


# --- FGVC-Aircraft ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level,k", [("variant", 3), ("family", 3), ("manufacturer", 3)])
def test_aircraft_levels_splits_and_banner(tmp_path, level, k):
    info = write_aircraft(tmp_path)
    index = open_dataset("aircraft", tmp_path, level=level)
    assert index.num_classes == k
    assert splits(index) == {"train": 3, "val": 3, "test": 3}
    assert index.train_splits == ("train", "val")  # trainval, as the papers train
    assert all(r.crop_bottom == 20 for r in index.records) and index.notes
    assert open_dataset("aircraft", info["data"], crop_banner=False).records[0].crop_bottom == 0
    if level == "variant":
        assert "Cessna 172" in index.class_names  # names with spaces survive
        assert index.records[0].box == (1.0, 2.0, 30.0, 24.0)


def test_aircraft_banner_is_cropped_when_decoding(tmp_path):
    from fgvc.data.dataset import load_rgb

    write_aircraft(tmp_path)
    r = open_dataset("aircraft", tmp_path).records[0]
    assert load_rgb(r.path, r.crop_bottom).size == (40, 30)


def test_aircraft_unknown_class_and_duplicate(tmp_path):
    info = write_aircraft(tmp_path)
    p = info["data"] / "images_variant_test.txt"
    p.write_text(p.read_text() + "1000001 Concorde\n")
    with pytest.raises(DataError, match=r"images_variant_test.txt:4: class 'Concorde' is not in"):
        open_dataset("aircraft", tmp_path)
    p.write_text(p.read_text().replace("Concorde", "707-320"))
    with pytest.raises(DataError, match="already listed"):
        open_dataset("aircraft", tmp_path)


def test_unknown_reader_option_is_a_config_error(tmp_path):
    write_aircraft(tmp_path)
    with pytest.raises(ConfigError, match="data.options.levl"):
        open_dataset("aircraft", tmp_path, levl="family")
    with pytest.raises(ConfigError, match=r"data.options.level: 'model' is not one of"):
        open_dataset("aircraft", tmp_path, level="model")


# --- Flowers-102, Pets -----------------------------------------------------------------------------------------

def test_flowers_setid_and_labels(tmp_path):
    write_flowers(tmp_path)
    index = open_dataset("flowers", tmp_path)
    assert splits(index) == {"train": 3, "val": 3, "test": 3}
    assert [r.label for r in index.records if r.split == "test"] == [0, 1, 2]
    assert index.train_splits == ("train", "val")


def test_flowers_overlap_between_sets_fails(tmp_path):
    write_flowers(tmp_path)
    savemat(tmp_path / "setid.mat", {"trnid": np.array([[1, 3]]), "valid": np.array([[2]]),
                                     "tstid": np.array([[3, 9]])})
    with pytest.raises(DataError, match="image 3 is in both trnid and tstid"):
        open_dataset("flowers", tmp_path)


def test_pets(tmp_path):
    info = write_pets(tmp_path)
    index = open_dataset("pets", tmp_path)
    assert index.class_names == info["names"]
    assert splits(index) == {"trainval": info["trainval"], "test": info["test"]}
    assert {r.extra["species"] for r in index.records} == {"cat", "dog"}


# --- iNaturalist ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["2017", "2018", "2021"])
def test_inat_versions(tmp_path, version):
    info = write_inat(tmp_path, version)
    index = open_dataset("inat", tmp_path)
    assert splits(index) == {"train": info["train"], "val": info["val"]}
    assert index.class_names == info["names"]  # ordered by category id: 3, 7
    assert index.test_splits == ("val",)
    if version == "2021":
        assert index.records[0].extra["kingdom"] == "Animalia"


def test_inat_category_without_training_images(tmp_path):
    write_inat(tmp_path, "2017")
    data = json.loads((tmp_path / "val2017.json").read_text())
    data["annotations"][0]["category_id"] = 99
    (tmp_path / "val2017.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="category 99 has no training image"):
        open_dataset("inat", tmp_path)


# --- folder and CSV -------------------------------------------------------------------------------------------

def test_folder_with_and_without_splits(tmp_path):
    write_folder(tmp_path / "a")
    index = open_dataset("folder", tmp_path / "a")
    assert index.class_names == ["cat", "dog"] and splits(index) == {"train": 6, "test": 6}
    write_folder(tmp_path / "b", splits=("",), classes=("x", "y", "z"))
    flat = open_dataset("folder", tmp_path / "b", test_fraction=0.34)
    assert flat.num_classes == 3 and splits(flat) == {"train": 6, "test": 3}


def test_csv_reader(tmp_path):
    for i in range(4):
        jpg(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "list.csv").write_text("path,label,split\nimg/0.jpg,heron,train\nimg/1.jpg,egret,train\n"
                                       "img/2.jpg,heron,test\nimg/3.jpg,egret,test\n")
    index = open_dataset("csv", tmp_path)
    assert index.class_names == ["egret", "heron"] and splits(index) == {"train": 2, "test": 2}
    (tmp_path / "list.csv").write_text("img/0.jpg,heron\nimg/9.jpg,egret\n")
    with pytest.raises(DataError, match=r"list.csv:2: image .*9.jpg is listed but not on disk"):
        open_dataset("csv", tmp_path)


def test_csv_columns_are_read_by_their_header_names(tmp_path):
    for i in range(4):
        jpg(tmp_path / "img" / f"{i}.jpg")
    # another order and an extra column: the names decide, and the reader says what it found
    (tmp_path / "list.csv").write_text("split,Species,notes,File\ntrain,heron,x,img/0.jpg\ntrain,egret,y,img/1.jpg\n"
                                       "test,heron,,img/2.jpg\ntest,egret,,img/3.jpg\n")
    index = open_dataset("csv", tmp_path)
    assert index.class_names == ["egret", "heron"] and splits(index) == {"train": 2, "test": 2}
    assert any("label = 'Species'" in n and "path = 'File'" in n for n in index.notes), index.notes
    # path,split has no label: read by position it took the split for the class; now it says so
    (tmp_path / "list.csv").write_text("path,split\nimg/0.jpg,train\nimg/1.jpg,test\n")
    with pytest.raises(DataError, match=r"list.csv:1: the CSV's header \(path, split\) has no label column"):
        open_dataset("csv", tmp_path)


def test_a_dataset_needs_two_classes_and_every_test_class_in_training(tmp_path):
    from fgvc.data import make_splits
    from fgvc.config import DataConfig

    write_folder(tmp_path / "one", classes=("x",))
    with pytest.raises(DataError, match="holds images of 1 class \\('x'\\); a classifier needs at least two"):
        make_splits(open_dataset("folder", tmp_path / "one"), DataConfig(dataset="folder"), 0)
    write_folder(tmp_path / "three", classes=("x", "y", "z"))
    for p in (tmp_path / "three" / "train" / "z").iterdir():
        p.unlink()
    (tmp_path / "three" / "train" / "z").rmdir()
    with pytest.raises(DataError, match="1 class\\(es\\) of the test split have no training image \\(e.g. 'z'\\)"):
        make_splits(open_dataset("folder", tmp_path / "three"), DataConfig(dataset="folder"), 0)


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'cubb' \\(did you mean cub\\?\\); available: .*synthetic"):
        open_dataset("cubb", tmp_path)
    with pytest.raises(DataError, match="needs a root folder"):
        open_dataset("cub", None)


# --- every registered reader, enrolled with its fake -------------------------------------------------

def _primary_names() -> dict[str, str]:
    """One name per registered reader function (its first name)."""
    from fgvc.data.readers.registry import _READERS

    out = {}
    for name, fn in _READERS.items():
        out.setdefault(fn, name)
    return {name: fn for fn, name in out.items()}


def test_every_registered_reader_has_a_fake_in_its_official_layout():
    from fakes import FAKES

    missing = sorted(set(_primary_names()) - set(FAKES))
    assert not missing, f"readers without a fake in tests/fakes.py FAKES: {missing}"


def _cases():
    from fakes import FAKES

    for name, fake in FAKES.items():
        for i, (kwargs, options, classes, counts) in enumerate(fake.cases):
            yield pytest.param(name, kwargs, options, classes, counts, id=f"{name}-{i}-{kwargs}-{options}")


@pytest.mark.parametrize("name,kwargs,options,classes,counts", list(_cases()))
def test_every_reader_reads_its_fake(name, kwargs, options, classes, counts, tmp_path):
    from fakes import FAKES

    written = FAKES[name].write(tmp_path, **kwargs)
    index = open_dataset(name, tmp_path, **options)
    assert index.num_classes == classes and len(index.class_names) == classes
    if counts is not None:
        assert dict(splits(index)) == counts
    assert "n" not in written or len(index.records) == written["n"]
    assert set(index.train_splits) | set(index.test_splits) <= set(splits(index)) | {"val", "test"}
    for r in index.records:
        assert Path(r.path).is_file() and 0 <= r.label < classes


# --- telling the layout from the files (compare's --dataset auto) -----------------------------------

@pytest.mark.parametrize("name,kwargs,options,classes,counts", list(_cases()))
def test_every_official_layout_is_told_from_its_files(name, kwargs, options, classes, counts, tmp_path):
    from fakes import FAKES

    from fgvc.data import detect_dataset
    from fgvc.data.readers.registry import _READERS

    FAKES[name].write(tmp_path / "unpacked", **kwargs)
    for pointed_at in (tmp_path / "unpacked", tmp_path):  # the archive's folder, or the folder above it
        if pointed_at == tmp_path and name in ("folder", "csv"):
            continue  # the user's own layouts are read where the user points, not one level down
        reader, folder, evidence = detect_dataset(pointed_at)
        assert _READERS[reader] is _READERS[name], (pointed_at, reader, evidence)
        assert evidence
        index = open_dataset(reader, folder, **options)
        assert index.num_classes == classes


def test_a_folder_without_a_known_layout_is_one_line_naming_the_way_out(tmp_path):
    from fgvc.data import detect_dataset

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no dataset layout fgvc reads.*--dataset"):
        detect_dataset(tmp_path)
    with pytest.raises(DataError, match="not found"):
        detect_dataset(tmp_path / "missing")
