"""Everything a comparison can know to be wrong before it trains anything, each in one line: the data (a wrong
path, an unknown reader, a dataset that cannot be split), the backbones and their weight files, the modes, every
row's settings as ``fgvc train`` would read them, the tuning spaces, and the storage. Nothing is started and
nothing in ``OUT`` is touched before these pass."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..backbones import check_backbone_name
from ..config import load_config
from ..errors import DataError, FgvcError
from .plan import MODES, Comparison, Row, train_arguments
from .recipes import dataset_file
from .space import Dimension, check_space, default_space, parse_space


def split_arguments(arguments: list[str]) -> tuple[list[str], list[str]]:
    """``fgvc train`` arguments as (config files, key=value settings)."""
    return [a for a in arguments if "=" not in a], [a for a in arguments if "=" in a]


def check_inputs(c: Comparison, log: Callable[[str], None] = print) -> None:
    """The command line's own values; ``--dataset auto`` becomes the reader the folder's files call for.

    Raises:
        FgvcError: The first that cannot work.
    """
    from ..data import detect_dataset, list_datasets

    if c.root is None and not dataset_file(c.dataset):
        raise FgvcError("compare needs the dataset's folder (or a dataset file: --dataset cars196)")
    if c.root is not None and not Path(c.root).expanduser().exists():
        raise DataError(f"dataset folder not found: {c.root}")
    if c.dataset == "auto":
        c.dataset, folder, evidence = detect_dataset(c.root)
        c.root = str(folder)
        log(f"reading {folder} as {c.dataset} ({evidence}); --dataset names another reader")
    known = set(list_datasets()) | {"synthetic"}
    if not dataset_file(c.dataset) and c.dataset not in known:
        raise FgvcError(f"--dataset: unknown reader or dataset file '{c.dataset}'; readers: {', '.join(sorted(known))}")
    if not c.backbones:
        raise FgvcError("--backbones: name at least one timm model")
    for backbone in c.backbones:
        check_backbone_name(backbone)
    for backbone, path in c.weights.items():
        if backbone not in c.backbones:
            raise FgvcError(f"--weights names {backbone}, which is not one of --backbones ({', '.join(c.backbones)})")
        if not Path(path).expanduser().is_file():
            raise FgvcError(f"--weights {backbone}={path}: file not found")
    bad = [m for m in c.modes if m not in MODES]
    if bad or not c.modes:
        raise FgvcError(f"--finetune: {', '.join(bad) or 'nothing'} is not a mode; the modes: {', '.join(MODES)}")
    if c.tune < 0:
        raise FgvcError(f"--tune takes a number of trials, 0 or more, got {c.tune}")
    if c.tune and not 0 < c.val_fraction < 1:
        raise FgvcError(f"--val-fraction must be between 0 and 1 (exclusive), got {c.val_fraction:g}")


def check_comparison(c: Comparison, plan: list[Row], log: Callable[[str], None] = print
                     ) -> dict[str, list[Dimension]]:
    """Checks a comparison before any run (see the module docstring); returns each tuned row's space.

    Raises:
        FgvcError: One line naming the first cause.
    """
    check_inputs(c, log)
    applicable = [row for row in plan if not row.refused]
    for row in plan:
        if row.refused:
            log(f"note: {row.describe()} does not apply: {row.refused}")
    if not applicable:
        raise FgvcError("no row applies: every method refused every backbone (see the notes above)")
    spaces: dict[str, list[Dimension]] = {}
    first = None
    for row in applicable:
        files, settings = split_arguments(train_arguments(c, row, workers=0))
        try:
            cfg = load_config(files, settings)
        except FgvcError as e:
            raise type(e)(f"{row.describe()}: {e}") from None
        first = first or (cfg, files, settings)
        if c.tune:
            space = cfg.search or default_space(cfg)
            dims = parse_space(space, f"search of {row.spec.method}'s recipe")
            check_space(dims, files, settings)
            spaces[row.key] = dims
    check_data(c, *first, log=log)
    if c.tune and c.storage:
        from .tune import open_storage

        open_storage(c)  # an unreachable storage: one line now, not once the runs start (OUT's own is made then)
    return spaces


HELD_OUT_TEST = 0.2  # the test share compare holds out of a user's folder or CSV that has no test split


def check_data(c: Comparison, cfg, files: list[str], settings: list[str], log: Callable[[str], None] = print
               ) -> None:
    """Reads the dataset once (as each run will) and makes its splits, with the tuning's validation split.

    A folder or CSV of the user's own with no test split (``photos/<class>/*.jpg``) gets a seeded, stratified
    held-out test split, the same for every run (a setting added to ``c.settings``), and the log says so.

    Raises:
        FgvcError: The dataset cannot be read or split (two classes, every test class in training, every class
            twice in training for a validation split).
    """
    from ..data import build_index, make_splits

    if c.tune:
        cfg.data.val_fraction = c.val_fraction
    index = build_index(cfg.data)
    present = set(index.records.present_splits())
    if index.name in ("folder", "csv") and not present & set(index.test_splits) and \
            "test_fraction" not in cfg.data.options:
        held_out = f"data.options.test_fraction={HELD_OUT_TEST}"
        c.settings.append(held_out)
        log(f"{index.root} has no test split: every run holds out the same seeded {HELD_OUT_TEST:.0%} of each class "
            f"as its test set ({held_out})")
        cfg.data.options["test_fraction"] = HELD_OUT_TEST
        index = build_index(cfg.data)
    splits = make_splits(index, cfg.data, cfg.train.seed)
    if not splits.test:
        raise DataError(f"{index.name}: the dataset has no test images (a folder without train/ and test/ needs "
                        "data.options.test_fraction=0.2)")


__all__ = ["check_inputs", "check_comparison", "check_data", "split_arguments"]
