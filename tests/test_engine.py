"""The engine's parts: schedule, checkpoints, data order, metrics, evaluation, and exact resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from fgvc.config import TrainConfig, load_config
from fgvc.engine import checkpoint as ckpt
from fgvc.engine.evaluate import predict_split
from fgvc.report.metrics import classification_report
from fgvc.engine.sampler import ResumableSampler
from fgvc.engine.trainer import lr_factor, train
from fgvc.errors import CheckpointError, ConfigError

from conftest import ROOT, tiny_overrides


# --- schedule -------------------------------------------------------------------------------------------

def test_warmup_then_cosine_to_zero():
    cfg = TrainConfig(warmup_steps=500, schedule="cosine")
    assert lr_factor(1, cfg, 10000, 100) == 1 / 500  # TransFG: the first update already uses f(1)
    assert lr_factor(500, cfg, 10000, 100) == 1.0
    assert math.isclose(lr_factor(5250, cfg, 10000, 100), 0.5, abs_tol=1e-9)
    assert math.isclose(lr_factor(10000, cfg, 10000, 100), 0.0, abs_tol=1e-12)


def test_step_schedule_every_two_epochs():
    cfg = TrainConfig(schedule="step", step_epochs=2, step_gamma=0.9)
    spe = 10
    assert [round(lr_factor(u, cfg, 100, spe), 6) for u in (1, 20, 21, 40, 41)] == [1.0, 1.0, 0.9, 0.9, 0.81]


# --- checkpoints ----------------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_refusals(tmp_path):
    state = {"step": 3, "w": torch.arange(5.0)}
    p = ckpt.save_checkpoint(state, tmp_path / "last.pt")
    assert torch.equal(ckpt.load_checkpoint(p)["w"], state["w"])
    data = p.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(tmp_path / "cut.pt")
    flipped = bytearray(data)
    flipped[100] ^= 0xFF
    (tmp_path / "flip.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        ckpt.load_checkpoint(tmp_path / "flip.pt")
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_find_resumable_falls_back_to_previous(tmp_path):
    ckpt.save_checkpoint({"step": 4}, tmp_path / "step-4.pt")
    ckpt.save_checkpoint({"step": 6}, tmp_path / "step-6.pt")
    ckpt.save_checkpoint({"step": 6}, tmp_path / "last.pt")
    (tmp_path / ".last.pt.tmp-999999").write_bytes(b"partial")  # a killed writer's leftover
    assert ckpt.find_resumable(tmp_path)[1]["step"] == 6
    (tmp_path / "last.pt").write_bytes(b"garbage")
    (tmp_path / "step-6.pt").write_bytes((tmp_path / "step-6.pt").read_bytes()[:-3])
    path, state = ckpt.find_resumable(tmp_path)
    assert path.name == "step-4.pt" and state["step"] == 4


# --- data order -----------------------------------------------------------------------------------------

def test_shards_of_two_ranks_equal_one_process_batches():
    one = ResumableSampler(23, seed=5).order(3).tolist()
    r0 = ResumableSampler(23, seed=5, rank=0, world_size=2).order(3).tolist()
    r1 = ResumableSampler(23, seed=5, rank=1, world_size=2).order(3).tolist()
    b = 4  # per-rank batch; the single process uses 2 * b
    for k in range(len(r0) // b):
        assert sorted(r0[k * b:(k + 1) * b] + r1[k * b:(k + 1) * b]) == sorted(one[k * 2 * b:(k + 1) * 2 * b])


def test_sampler_resumes_mid_epoch_and_changes_per_epoch():
    s = ResumableSampler(10, seed=1)
    s.set_epoch(2)
    full = [i for i, _ in s]
    s.set_epoch(2, start=4)
    assert [i for i, _ in s] == full[4:] and len(s) == 6
    s.set_epoch(3)
    assert [i for i, _ in s] != full
    assert all(e == 3 for _, e in s)


# --- metrics --------------------------------------------------------------------------------------------

def test_report_hand_case():
    logits = torch.tensor([[5.0, 1, 0], [0, 5, 1], [0, 1, 5], [1, 5, 0], [5, 0, 1], [0, 1, 5]])
    targets = torch.tensor([0, 1, 2, 0, 0, 1])
    r = classification_report(logits, targets, ["a", "b", "c"], topk=2, pairs=5)
    assert r["top1"] == pytest.approx(100 * 4 / 6)
    assert r["top2"] == pytest.approx(100.0)
    assert r["mean_class_acc"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 1) / 3)
    assert r["confused_pairs"][0]["true_name"] == "a" and r["confused_pairs"][0]["pred_name"] == "b"
    assert {(p["true"], p["pred"], p["count"]) for p in r["confused_pairs"]} == {(0, 1, 1), (1, 2, 1)}


# --- evaluation -------------------------------------------------------------------------------------------

def test_eval_halves_batch_on_oom_and_gives_same_result(synth_root):
    from fgvc.data import open_dataset
    from fgvc.data.transforms import Preprocess
    from fgvc.methods import create_model

    index = open_dataset("cub", synth_root)
    model = create_model("baseline", backbone="test_resnet", num_classes=4, img_size=32).eval()
    data = load_config(None, ["data.img_size=32", "data.resize=36"]).data
    tf = Preprocess.from_config(data, (0.5,) * 3, (0.5,) * 3).transform()
    records = index.records[:10]
    ref, targets, _ = predict_split(model, records, tf, batch_size=10, device=torch.device("cpu"))
    real_forward = model.forward
    calls = []

    def flaky(x):
        calls.append(x.shape[0])
        if x.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (faked)")
        return real_forward(x)

    model.forward = flaky
    out, targets2, _ = predict_split(model, records, tf, batch_size=10, device=torch.device("cpu"))
    assert torch.allclose(out, ref, atol=1e-5) and torch.equal(targets, targets2)
    assert calls[:3] == [10, 5, 2] and max(calls[2:]) <= 3


# --- runs -------------------------------------------------------------------------------------------------

def _run(tmp_path, synth_root, name, *extra):
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml",
                      tiny_overrides(synth_root, tmp_path / name, **{"train.keep_checkpoints": 20,
                                                                     "eval.explain_samples": 0}) + list(extra))
    return train(cfg, progress=False)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"]


def test_same_seed_same_losses_other_seed_differs(tmp_path, synth_root):
    a = _run(tmp_path, synth_root, "a", "train.epochs=2")
    b = _run(tmp_path, synth_root, "b", "train.epochs=2")
    c = _run(tmp_path, synth_root, "c", "train.epochs=2", "train.seed=1")
    assert _losses(a.run_dir) == _losses(b.run_dir)
    assert _losses(a.run_dir) != _losses(c.run_dir)
    assert (a.run_dir / "config.yaml").is_file() and (a.run_dir / "labels.json").is_file()
    assert json.loads((a.run_dir / "report" / "test.json").read_text())["num_images"] == 16


def test_resume_from_a_middle_checkpoint_is_bitwise_exact(tmp_path, synth_root):
    extra = ["train.epochs=3", "train.ckpt_every=1", "data.batch_size=6", "train.grad_accum=2",
             "train.ema_decay=0.9", "train.record_sample_ids=true"]
    full = _run(tmp_path, synth_root, "full", *extra)
    assert full.steps == 9  # 32 images // 6 = 5 micro-batches -> 3 optimizer steps per epoch
    # Continue a new folder from the step-4 checkpoint (the middle of epoch 1).
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(full.run_dir / "step-4.pt", part / "last.pt")
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml",
                      tiny_overrides(synth_root, part, **{"train.keep_checkpoints": 20, "eval.explain_samples": 0})
                      + extra)
    resumed = train(cfg, resume="auto", progress=False)
    a = ckpt.load_checkpoint(full.run_dir / "last.pt")
    b = ckpt.load_checkpoint(resumed.run_dir / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    ids_full = (full.run_dir / "sample_ids.txt").read_text().splitlines()
    ids_resumed = (part / "sample_ids.txt").read_text().splitlines()
    assert ids_full[-len(ids_resumed):] == ids_resumed  # the same batches in the same order


def test_resume_refuses_another_config(tmp_path, synth_root):
    run = _run(tmp_path, synth_root, "r", "train.epochs=1")
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml",
                      tiny_overrides(synth_root, run.run_dir, **{"train.lr": 0.9}))
    with pytest.raises(CheckpointError, match=r"config differs: .*train.lr: 0.05 -> 0.9"):
        train(cfg, resume="auto", progress=False)


def test_new_run_refuses_an_existing_run_folder(tmp_path, synth_root):
    run = _run(tmp_path, synth_root, "x", "train.epochs=1")
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml", tiny_overrides(synth_root, run.run_dir))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, progress=False)


def test_resume_refuses_another_dataset(tmp_path, synth_root):
    run = _run(tmp_path, synth_root, "d", "train.epochs=1")
    other = tmp_path / "other"
    shutil.copytree(synth_root, other)
    labels = other / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("\n3 1\n", "\n3 2\n"))
    cfg = load_config(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml",
                      tiny_overrides(other, run.run_dir, **{"train.keep_checkpoints": 20, "eval.explain_samples": 0,
                                                            "train.epochs": 1}))
    with pytest.raises(CheckpointError, match="the dataset differs"):
        train(cfg, resume="auto", progress=False)
    resumed = train(cfg, resume="auto", allow_mismatch=True, progress=False)  # explicitly allowed
    assert resumed.steps == 4


def test_validation_split_chooses_the_checkpoint_and_test_is_evaluated_once(tmp_path, synth_root):
    run = _run(tmp_path, synth_root, "v", "train.epochs=3", "data.val_fraction=0.25", "train.select=best_val")
    lines = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [x for x in lines if x["kind"] == "val"]
    assert len(vals) == 3 and all(v["top1"] >= 0 for v in vals)
    assert sum(x["kind"] == "test" for x in lines) == 1  # the test split is evaluated once, at the end
    best = ckpt.load_checkpoint(run.run_dir / "best.pt")
    assert best["best_val"] == max(v["top1"] for v in vals)
    assert run.test["weights"].startswith(f"best validation checkpoint (step {best['step']})")
    assert run.test["num_images"] == 16  # the official test split, untouched by the carve-out
    with pytest.raises(ConfigError, match="needs a validation split"):
        _run(tmp_path, synth_root, "w", "train.select=best_val")


@pytest.mark.slow
def test_gpu_check_without_cuda_says_so_and_passes_its_cpu_run(tmp_path):
    """`make gpu-check` on a machine without CUDA: one line that says so, then the same path at tiny sizes."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fgvc.bench.gpu_check", "--out", str(tmp_path / "gc")], capture_output=True,
                       text=True, timeout=900, env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert r.stdout.splitlines()[0] == "gpu-check: no CUDA device here; running the same path at tiny sizes on the CPU"
    summary = json.loads((tmp_path / "gc" / "gpu-check.json").read_text())
    assert not summary["failed"] and all(f["ok"] for f in summary["functional"].values())
    assert len(summary["bench"]) == 8 and all(r["ok"] and r["step_ratio"] > 0 for r in summary["bench"])
    assert "| transfg | OK |" in r.stdout
