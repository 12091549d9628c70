"""Typed config: YAML recipes, overrides, one clear error per bad key or type."""

from __future__ import annotations

import pytest
import yaml

from fgvc.config import RunConfig, load_config, parse_overrides, save_config, to_dict
from fgvc.errors import ConfigError
from fgvc.methods import method_config

from conftest import ROOT


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["train.lr=0.5", "data.root=/data/CUB_200_2011", "train.clip_grad=1",
                             "data.color_jitter=[0.1,0,0.5]", "train.weight_decay=5e-4", "model.backbone_args.embed_dim=32"])
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert cfg.data.root == "/data/CUB_200_2011"
    assert cfg.train.clip_grad == 1.0
    assert cfg.train.weight_decay == 5e-4  # YAML 1.1 reads 5e-4 as a string; it is still a number
    assert cfg.data.color_jitter == [0.1, 0.0, 0.5]
    assert cfg.model.backbone_args == {"embed_dim": 32}


@pytest.mark.parametrize("item,message", [
    ("train.lrr=0.1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("train.amp=fp8", "train.amp: 'fp8' is not one of"),
    ("data.hflip=maybe", "data.hflip: expected true or false"),
    ("trian.lr=1", "unknown config key 'trian'"),
    ("train.lr", "not of the form key=value"),
])
def test_bad_overrides_name_the_key(item, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_method_options_are_validated_by_the_method():
    assert method_config("baseline", {"dropout": 0.2}).dropout == 0.2
    with pytest.raises(ConfigError, match="unknown config key 'method.dropuot'"):
        method_config("baseline", {"dropuot": 0.2})


def test_base_chain_and_round_trip(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {lr: 0.3, epochs: 7}\ndata: {img_size: 448}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {lr: 0.1}\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.epochs=9"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.img_size) == (0.1, 9, 448)
    save_config(cfg, tmp_path / "saved.yaml")
    again = load_config(tmp_path / "saved.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "fgvc" / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_is_valid(path):
    cfg = load_config(path)
    method_config(cfg.model.method, cfg.method)
    assert isinstance(cfg, RunConfig)
    raw = yaml.safe_load(path.read_text())
    if "reference" in raw and raw["reference"].get("paper_top1") is not None:
        assert 0 < cfg.reference.paper_top1 <= 100


def test_demo_recipe_is_valid():
    from fgvc.recipes import DEMO

    cfg = load_config(DEMO)
    assert cfg.data.dataset == "synthetic" and not cfg.model.pretrained


def test_recipes_are_found_by_name_and_unknown_pairs_name_what_exists():
    from fgvc.recipes import list_recipes, recipe_path, resolve_recipe

    assert resolve_recipe("transfg/cub") == recipe_path("transfg", "cub")
    assert resolve_recipe("configs/transfg/cub.yaml") == recipe_path("transfg", "cub")  # a source checkout's form
    assert "cub" in list_recipes()["wsdan"] and "_base" not in list_recipes()["wsdan"]
    with pytest.raises(ConfigError, match=r"no recipe transfg/cubb; did you mean transfg/cub\? transfg has recipes "
                                          r"for: cars, cub, dogs, finetune, inat2017, nabirds"):
        recipe_path("transfg", "cubb")
    with pytest.raises(ConfigError, match=r"no recipes for method 'tranfsg' \(did you mean transfg\?\)"):
        recipe_path("tranfsg", "cub")
    with pytest.raises(ConfigError, match="no recipe transfg/_base"):
        recipe_path("transfg", "_base")


def test_parse_overrides_rejects_empty_key():
    with pytest.raises(ConfigError):
        parse_overrides(["=3"])


@pytest.mark.parametrize("item,message", [
    ("train.epochs=-1", "train.epochs: must be at least 1 (or set train.steps), got -1"),
    ("train.epochs=0", "train.epochs: must be at least 1"),
    ("train.lr=0", "train.lr: must be positive"),
    ("data.batch_size=0", "data.batch_size: must be at least 1"),
    ("data.val_fraction=1", "data.val_fraction: must be in [0, 1)"),
    ("data.resize=32", "data.resize: must be at least 224"),
    ("data.max_classes=1", "data.max_classes: must be at least 2"),
    ("train.clip_grad=0", "train.clip_grad: must be positive"),
    ("eval.topk=0", "eval.topk: must be at least 1"),
])
def test_values_no_run_can_use_are_refused_naming_the_key(item, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert message in str(e.value) and "\n" not in str(e.value)
    assert load_config(None, ["train.epochs=0", "train.steps=5"]).train.steps == 5  # steps replace epochs


def test_resize_follows_a_new_img_size_unless_set_with_it():
    recipe = ROOT / "fgvc" / "configs" / "transfg" / "cub.yaml"
    assert (load_config(recipe).data.img_size, load_config(recipe).data.resize) == (448, 600)
    cfg = load_config(recipe, ["data.img_size=96"])
    assert cfg.data.resize is None  # the 8/7 rule: 110
    from fgvc.data.transforms import resize_size

    assert resize_size(cfg.data) == 110
    assert load_config(recipe, ["data.img_size=96", "data.resize=128"]).data.resize == 128
    assert load_config(recipe, ["data.resize=640"]).data.resize == 640
    # a later file that sets the size alone drops an earlier file's resize; one that sets both keeps its own
    finetune, cars = (ROOT / "fgvc" / "configs" / p for p in ("wsdan/finetune.yaml", "datasets/cars196.yaml"))
    assert load_config([finetune, cars]).data.resize == 512
