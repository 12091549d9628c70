"""Stanford Cars (196 classes, 8,144 train / 8,041 test), in both official layouts.

Layout A (the devkit): ``cars_train/``, ``cars_test/``, ``devkit/cars_train_annos.mat``,
``cars_test_annos_withlabels.mat`` (in the root or in ``devkit/``) and ``devkit/cars_meta.mat``.
Layout B (the all-in-one archive): ``car_ims/`` and ``cars_annos.mat`` with a ``test`` flag per image.
Boxes come from the annotation structs (``bbox_x1..bbox_y2``, inclusive pixel corners). Mirrors that
rename the files (Kaggle's class-folder copies) are detected and reported: read them with ``folder``.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..index import DatasetIndex
from ..record import Record
from ._text import check_files_exist, load_mat, mat_field
from .registry import register_reader


def _class_names(meta: dict, path: Path) -> list[str]:
    if "class_names" not in meta:
        raise DataError(f"{path}: no 'class_names' variable")
    return [str(n) for n in list(meta["class_names"])]


def _records(ann, path: Path, image_dir: Path, name_field: str, split, num_classes: int) -> list[Record]:
    names = mat_field(ann, name_field, path)
    classes = mat_field(ann, "class", path)
    corners = [mat_field(ann, f, path) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
    tests = mat_field(ann, "test", path) if split is None else None
    records = []
    for i, (fname, cls) in enumerate(zip(names, classes)):
        cls = int(cls)
        if not 1 <= cls <= num_classes:
            raise DataError(f"{path}: annotation {i + 1} ({fname}): class {cls} out of range 1..{num_classes}")
        x1, y1, x2, y2 = (float(c[i]) for c in corners)
        s = ("test" if int(tests[i]) else "train") if split is None else split
        records.append(Record(path=str(image_dir / str(fname)), label=cls - 1, split=s,
                              box=(x1, y1, x2 - x1 + 1, y2 - y1 + 1)))
    return records


def _nested(d: Path) -> Path:
    # Some mirrors unpack cars_train/cars_train/*.jpg.
    inner = d / d.name
    return inner if inner.is_dir() else d


@register_reader("cars", "stanford_cars", description="Stanford Cars (devkit layout or car_ims + cars_annos.mat)")
def read_cars(root: Path) -> DatasetIndex:
    """Stanford Cars in layout A or B (see the module docstring)."""
    candidates = [root, root / "stanford_cars", root / "StanfordCars"]
    base = next((c for c in candidates if (c / "cars_annos.mat").is_file() or (c / "devkit").is_dir()), None)
    if base is None:
        if any((c / "car_data").is_dir() or (c / "cars_train").is_dir() for c in candidates):
            raise DataError(f"{root}: this looks like a mirror of Stanford Cars without the official "
                            "annotation files (devkit/ or cars_annos.mat); read its class folders with "
                            "data.dataset=folder")
        raise DataError(f"{root} does not look like Stanford Cars: expected devkit/ or cars_annos.mat")
    notes = []
    if (base / "cars_annos.mat").is_file():  # layout B
        path = base / "cars_annos.mat"
        mat = load_mat(path)
        names = _class_names(mat, path)
        records = _records(mat.get("annotations"), path, base, "relative_im_path", None, len(names))
    else:  # layout A
        devkit = base / "devkit"
        meta_path = devkit / "cars_meta.mat"
        names = _class_names(load_mat(meta_path), meta_path)
        train_path = devkit / "cars_train_annos.mat"
        test_path = next((p for p in (base / "cars_test_annos_withlabels.mat",
                                      devkit / "cars_test_annos_withlabels.mat") if p.is_file()), None)
        if test_path is None:
            raise DataError(f"missing annotation file: cars_test_annos_withlabels.mat (looked in {base} "
                            f"and {devkit}); devkit/cars_test_annos.mat has no labels")
        train_dir, test_dir = _nested(base / "cars_train"), _nested(base / "cars_test")
        if train_dir != base / "cars_train":
            notes.append(f"images found in the nested folder {train_dir} (a mirror's layout)")
        records = (_records(load_mat(train_path).get("annotations"), train_path, train_dir, "fname", "train",
                            len(names))
                   + _records(load_mat(test_path).get("annotations"), test_path, test_dir, "fname", "test",
                              len(names)))
    missing = [r for r in records if not Path(r.path).is_file()]
    if missing and len(missing) == len(records):
        raise DataError(f"none of the images named in the annotations exist (first: {missing[0].path}); "
                        "mirrors that rename the files cannot be matched to the official annotations: "
                        "read them with data.dataset=folder")
    check_files_exist((Path(r.path), "annotation") for r in records)
    return DatasetIndex(name="cars", root=str(base), records=records, class_names=names,
                        class_ids=[str(i + 1) for i in range(len(names))],
                        expected={"train": 8144, "test": 8041}, expected_classes=196, notes=notes)
