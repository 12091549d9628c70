"""The run report: report/index.html with curves, confusion matrix, per-class accuracy, confused pairs and
overlays, written after training and rebuilt by `fgvc report RUN`, looked at in a real headless browser."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgvc.cli import main
from fgvc.report.plots import confused_block

from browser import chromium


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", "smoke/baseline", f"out={out}", "--quiet", "data.val_fraction=0.25",
                 "eval.explain_samples=3"]) == 0
    return out


def test_training_writes_the_report_and_fgvc_report_rebuilds_it(run_dir, capsys):
    folder = run_dir / "report"
    for f in ("index.html", "curves.png", "confusion.png", "per_class.png", "test_predictions.npz"):
        assert (folder / f).is_file(), f
    assert len(list((folder / "explain").glob("*.png"))) == 3
    for f in ("index.html", "curves.png", "confusion.png"):
        (folder / f).unlink()
    assert main(["report", str(run_dir)]) == 0 and "index.html" in capsys.readouterr().out
    page = (folder / "index.html").read_text()
    assert "curves.png" in page and "confusion.png" in page and "explain/" in page and "test top-1" in page
    assert main(["report", str(run_dir), "--overlays", "2"]) == 0  # redrawn from the checkpoint and the dataset


def test_the_page_shows_curves_matrix_and_overlays_in_a_browser(run_dir, tmp_path):
    driver = chromium()
    try:
        driver.get((run_dir / "report" / "index.html").as_uri())
        images = driver.find_elements("tag name", "img")
        loaded = {img.get_attribute("src").rsplit("/", 1)[-1]: driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img) for img in images}
        assert loaded.get("curves.png", 0) > 100 and loaded.get("confusion.png", 0) > 100, loaded
        assert sum(1 for k, v in loaded.items() if k.endswith(".png") and v > 0) >= 5, loaded
        driver.execute_script("window.scrollTo(0, 0)")
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        shot.save(tmp_path / "report.png")
        assert np.asarray(shot).std() > 10  # not a blank page
    finally:
        driver.quit()


def test_overlay_captions_carry_truth_prediction_and_a_legend(run_dir):
    from fgvc.explain import caption_for

    import torch

    names = json.loads((run_dir / "labels.json").read_text())["class_names"]
    probs = torch.tensor([0.1, 0.7, 0.2] + [0.0] * (len(names) - 3))
    right, wrong = caption_for(probs, names, 1), caption_for(probs, names, 0)
    assert right[0][0] == f"true: {names[1]}" and right[1][0].endswith("right") and wrong[1][0].endswith("wrong")
    assert f"predicted: {names[1]} (70.0%)" in right[1][0]  # the whole class name, never cut


def test_the_confusion_picture_keeps_all_classes_up_to_sixty_then_the_most_confused():
    small = np.eye(20, dtype=int) * 5
    assert list(confused_block(small)) == list(range(20))
    big = np.eye(100, dtype=int) * 5
    big[7, 3] = big[50, 51] = 4
    keep = confused_block(big)
    assert len(keep) == 60 and {3, 7, 50, 51} <= set(keep.tolist())


def test_runs_side_by_side_plot_each_runs_classification_loss(tmp_path):
    from fgvc.report.plots import plot_run_comparison

    def records(term, start):
        return [{"kind": "train", "step": s, term: start / s, "loss": 9.0, "train_acc": float(s)} for s in (1, 2, 3)]

    path = tmp_path / "c.png"
    assert plot_run_comparison({"vit": records("cls", 3.0), "rams": records("cls_scale1", 4.0)}, path)
    img = np.asarray(Image.open(path).convert("L"))
    assert img.shape[1] > 800 and img.std() > 10  # a drawn figure, not a blank canvas
    assert not plot_run_comparison({"empty": []}, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_curves_of_a_run_with_one_logged_point_are_drawn(tmp_path):
    """One training record (a one-epoch run that logs once): each panel shows its point, not empty axes."""
    from fgvc.report.plots import plot_curves, plot_run_comparison

    records = [{"kind": "train", "step": 3, "epoch": 1, "lr": 0.01, "loss": 1.5, "cls": 1.5, "train_acc": 40.0},
               {"kind": "val", "step": 3, "epoch": 1, "top1": 35.0}]
    assert plot_curves(records, tmp_path / "curves.png")
    pixels = np.asarray(Image.open(tmp_path / "curves.png").convert("RGB")).astype(int)
    purple = (np.abs(pixels - np.array([148, 103, 189])).sum(-1) < 40).sum()  # the learning-rate panel's colour
    assert purple > 10, purple
    assert plot_run_comparison({"baseline": records}, tmp_path / "runs.png", reference=("baseline",))
    drawn = np.asarray(Image.open(tmp_path / "runs.png").convert("L"))
    left = drawn[:, : drawn.shape[1] // 2]  # the loss panel: no legend there, only the point
    assert (left < 40).sum() > 30
