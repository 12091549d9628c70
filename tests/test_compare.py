"""fgvc compare: paired differences with their uncertainty (constructed cases with known answers), and the whole
command on the shared 17 Flowers with two methods and a tiny budget: its files, its page in a real browser, and
a second run that trains nothing."""

from __future__ import annotations

import io
import json
from math import comb

import numpy as np
import pytest
from PIL import Image

from fgvc.cli import main
from fgvc.compare.stats import bootstrap_interval, mcnemar_exact, paired_difference

from browser import chromium
from conftest import ROOT

SHARED = ROOT.parent / "shared" / "data"


def outcomes(n: int, both: int, only_first: int, only_second: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image right/wrong of two methods on ``n`` images with the given overlap."""
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:both] = b[:both] = True
    a[both:both + only_first] = True
    b[both + only_first:both + only_first + only_second] = True
    return a, b


def test_a_few_images_on_17_flowers_are_within_noise():
    # 510 test images; the method gets 3 more right than the baseline (0.6 points): the exact test says noise
    a, b = outcomes(510, 470, 5, 2)
    d = paired_difference(a, b)
    assert d["diff"] == pytest.approx(100 * 3 / 510) and d["verdict"] == "within noise"
    assert d["p_value"] == pytest.approx(2 * sum(comb(7, k) for k in range(3)) / 2**7)  # 2 P(X <= 2), X~B(7, 1/2)
    assert d["ci_low"] < 0 < d["ci_high"]


def test_a_large_difference_is_beyond_noise_with_the_exact_p():
    a, b = outcomes(510, 400, 40, 8)
    d = paired_difference(a, b)
    assert d["verdict"] == "better" and d["diff"] == pytest.approx(100 * 32 / 510)
    assert d["p_value"] == pytest.approx(2 * sum(comb(48, k) for k in range(9)) / 2**48)
    assert paired_difference(b, a)["verdict"] == "worse"
    assert mcnemar_exact(0, 0) == 1.0


def test_the_interval_comes_from_the_pairs():
    # both 50% right on the same images: no discordant image, so no uncertainty at all
    a, b = outcomes(400, 200, 0, 0)
    d = paired_difference(a, b)
    assert (d["diff"], d["ci_low"], d["ci_high"], d["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    # both 50% right on disjoint images: the same accuracies, but every image disagrees
    a, b = outcomes(400, 0, 200, 200)
    d = paired_difference(a, b)
    assert d["diff"] == 0.0 and d["ci_low"] < -5 and d["ci_high"] > 5 and d["verdict"] == "within noise"


def test_the_multinomial_bootstrap_matches_resampling_images():
    a, b = outcomes(300, 200, 30, 12)
    lo, hi = bootstrap_interval(30, 12, 300)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 300, size=(4000, 300))
    diffs = 100 * (a[idx].mean(1) - b[idx].mean(1))
    ref_lo, ref_hi = np.percentile(diffs, [2.5, 97.5])
    assert abs(lo - ref_lo) < 0.7 and abs(hi - ref_hi) < 0.7
    assert lo < 100 * 18 / 300 < hi


def test_bench_data_plans_one_comparison_per_backbone(tmp_path):
    from fgvc.bench.realdata import comparisons

    plans = comparisons(["cnn", "lr", "vit"], "cars196", tmp_path, tmp_path / "out", "cpu", None, None, 0, "cpu")
    assert [c.backbones for c in plans] == [["efficientnet_lite0"], ["vit_tiny_patch16_224"]]
    lite = plans[0]
    assert [r.name for r in lite.runs][:8] == ["baseline", "dbgce", "wsdan", "cal", "pmg", "pim", "herbs",
                                              "wsdan official lr"]
    assert lite.budget.classes == 30 and lite.budget.img_size == 160 and lite.out.name == "cars196-lite0"
    assert [r.name for r in plans[1].runs] == ["baseline", "transfg", "rams_trans"]
    assert plans[1].budget.img_size == 224


@pytest.mark.slow
def test_compare_on_17_flowers_writes_the_page_and_a_rerun_trains_nothing(tmp_path, capsys):
    if not (SHARED / "flowers17").is_dir():
        pytest.fail(f"the shared data is missing: {SHARED} (tests read 17 Flowers from ../shared/data)")
    out = tmp_path / "cmp"
    args = ["compare", str(SHARED / "flowers17"), "--backbone", "efficientnet_lite0", "--weights",
            str(SHARED / "efficientnet_lite0_in1k.safetensors"), "--methods", "baseline,dbgce", "--epochs", "1",
            "--img-size", "48", "--classes", "3", "--batch-size", "16", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "| dbgce |" in printed and "\r" not in printed
    assert "dbgce on efficientnet_lite0: epoch 1 of 1" in printed  # one line per event
    for f in ("index.html", "results.json", "results.csv", "curves_efficientnet_lite0.png",
              "per_class_efficientnet_lite0.png", "costs.png"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "results.json").read_text())
    assert summary["classes"] == 3 and summary["test_images"] == 90
    assert summary["per_backbone"]["efficientnet_lite0"]["reference"] == "baseline"
    rows = {r["name"]: r for r in summary["rows"]}
    # the difference is the one the runs' own per-image predictions give
    preds = {n: np.load(out / "runs" / r["key"] / "report" / "test_predictions.npz") for n, r in rows.items()}
    right = {n: p["top_index"][:, 0] == p["targets"] for n, p in preds.items()}
    v = rows["dbgce"]["vs_baseline"]
    assert v["diff"] == pytest.approx(100 * (right["dbgce"].mean() - right["baseline"].mean()))
    assert v["only_first"] == int((right["dbgce"] & ~right["baseline"]).sum())
    assert rows["dbgce"]["top1"] == pytest.approx(100 * right["dbgce"].mean())
    assert rows["dbgce"]["infer_img_per_s"] > 0
    assert rows["dbgce"]["parameters"] == rows["dbgce"]["trainable"] > 0  # full fine-tuning trains every parameter
    # the parameter panel's front is over the parameters trained: a row is off it when the other is at least as
    # accurate with no more trained parameters (and better in one)
    base, db = rows["baseline"], rows["dbgce"]
    beaten = {"baseline": db["top1"] >= base["top1"] and db["trainable"] <= base["trainable"]
              and (db["top1"] > base["top1"] or db["trainable"] < base["trainable"]),
              "dbgce": base["top1"] >= db["top1"] and base["trainable"] <= db["trainable"]
              and (base["top1"] > db["top1"] or base["trainable"] < db["trainable"])}
    assert sorted(summary["pareto"]["params"]) == sorted(r["key"] for n, r in rows.items() if not beaten[n])
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("backbone,name,method,mode,top1") and len(csv_lines) == 3
    shown = sorted((out / "explain").rglob("*.png"))
    assert len(shown) == 2 * 3  # 4 images asked, one per class: the 3 classes
    # the page, in a browser: the grid, the table with both runs, the figures and the explanations loaded
    driver = chromium()
    try:
        driver.get((out / "index.html").as_uri())
        assert "1 epoch at 48 px" in driver.find_element("id", "protocol").text
        grid = driver.find_element("id", "grid").text
        assert "baseline" in grid and "dbgce" in grid and "reference" in grid
        widths = [(img.get_attribute("src"), driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img))
            for img in driver.find_elements("tag name", "img")]
        loaded = {src.rsplit("/", 1)[-1]: w for src, w in widths}
        assert loaded.get("costs.png", 0) > 100 and loaded.get("curves_efficientnet_lite0.png", 0) > 100, widths
        assert sum(1 for src, w in widths if w and "/explain/" in src) == 6, widths
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        assert np.asarray(shot).std() > 10
    finally:
        driver.quit()
    # the same command again trains nothing (with more runs at once: fewer loader workers each, no difference)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("last.pt")}
    assert main(args + ["--parallel", "2"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("last.pt")} == stamps


def test_a_plain_vit_baseline_gets_the_vit_finetune_recipe():
    """The baseline's CNN rates diverge on a plain ViT: compare trains the baseline there with finetune_vit (the
    ViT methods' optimizer); methods without a finetune_vit, and CNNs, keep METHOD/finetune."""
    from fgvc.compare import finetune_recipe
    from fgvc.config import load_config

    vit = finetune_recipe("baseline", "vit_tiny_patch16_224")
    assert vit.name == "finetune_vit.yaml"
    cfg = load_config(str(vit))
    assert (cfg.train.lr, cfg.train.head_lr_scale, cfg.train.clip_grad, cfg.train.weight_decay) == (0.03, 1.0, 1.0, 0.0)
    assert cfg.train.warmup_fraction == load_config(str(finetune_recipe("baseline"))).train.warmup_fraction
    assert finetune_recipe("baseline", "efficientnet_lite0").name == "finetune.yaml"
    assert finetune_recipe("transfg", "vit_tiny_patch16_224").name == "finetune.yaml"
    assert finetune_recipe("baseline", "no_such_model").name == "finetune.yaml"


def test_the_page_says_a_failure_plainly_and_shows_each_explained_image_at_its_width(tmp_path):
    """A failed run read 'failed: error: ... in 0.1 min'; a one-epoch budget read '1 epochs'; a method's five-panel
    overlay was squeezed into one column of a table."""
    from fgvc.compare.page import build_page

    rows = [{"name": "baseline", "method": "baseline", "mode": "full", "backbone": "resnet18", "key": "resnet18/baseline",
             "reference": True, "top1": 50.0, "mean_class_acc": 50.0, "per_class": [50.0, 50.0], "run_dir": None,
             "command": "fgvc train baseline/finetune"},
            {"name": "cal", "method": "cal", "mode": "full", "backbone": "resnet18", "key": "resnet18/cal",
             "reference": False, "top1": None, "error": "cannot read image x.jpg", "run_dir": None,
             "command": "fgvc train cal/finetune"}]
    summary = {"title": "t", "dataset": "folder", "backbones": ["resnet18"], "modes": ["full"], "budget": {"epochs": 1},
               "tune": 0, "classes": 2, "test_images": 4, "rows": rows, "machine": "cpu", "date": "2026-12-06",
               "pareto": {"train": [], "infer": [], "params": []},
               "per_backbone": {"resnet18": {"reference": "baseline", "pairs": [], "explained": []}}}
    shown = {"resnet18": {"baseline": ["explain/resnet18/baseline/000_a.png"]}}
    page = build_page(summary, tmp_path, shown).read_text()
    assert "failed: cannot read image x.jpg" in page and "error: " not in page
    assert "1 epoch at" in page and "1 epochs" not in page
    assert "class='explained'" in page and "img.overlay{max-width:100%}" in page
