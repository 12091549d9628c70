"""A run made by an earlier fgvc still works: it evaluates, predicts, exports and resumes to the weights that the
earlier version reached without interruption.

``tests/data/legacy_run`` was written by fgvc at commit 7e41952 (before the package was reorganized):
``fgvc train smoke/baseline model.backbone=test_efficientnet train.keep_checkpoints=2``; its ``last.pt`` is that
run's checkpoint at the end of epoch 1 of 2, and ``expected.json`` holds the sum of every parameter tensor of its
checkpoint at the end of epoch 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fgvc.cli import main
from fgvc.engine.checkpoint import load_checkpoint

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_run"


@pytest.fixture
def legacy(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    return run


def test_a_legacy_run_evaluates_predicts_and_exports(legacy, tmp_path, capsys):
    assert main(["eval", str(legacy), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 36 and report["step"] == 4

    from fgvc.data.synthetic import ensure_synthetic  # the smoke recipe's data, generated again from its seed

    images = sorted(ensure_synthetic(classes=6, train_per_class=12, test_per_class=6, size=64, seed=0).rglob("*.jpg"))[:3]
    assert main(["predict", str(legacy), *map(str, images), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 3 and all(len(p["top"]) == 5 for p in predictions)

    assert main(["export", str(legacy), str(tmp_path / "model.pt2")]) == 0
    assert (tmp_path / "model.pt2").is_file() and (tmp_path / "model.pt2.json").is_file()


def test_a_legacy_run_resumes_to_the_weights_of_its_uninterrupted_run(legacy):
    assert main(["train", str(legacy / "config.yaml"), "--out", str(legacy), "--resume", "auto", "--quiet"]) == 0
    state = load_checkpoint(legacy / "last.pt")
    expected = json.loads((LEGACY / "expected.json").read_text())
    assert state["step"] == expected["step"]
    sums = {k: float(v.double().sum()) for k, v in state["model"].items() if v.is_floating_point()}
    assert sums.keys() == expected["parameter_sums"].keys()
    for name, value in expected["parameter_sums"].items():
        assert sums[name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
    assert torch.isfinite(torch.tensor(list(sums.values()))).all()
