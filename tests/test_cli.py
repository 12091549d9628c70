"""The fgvc command end to end: synth -> train -> eval -> predict -> explain -> verify, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fgvc.cli import main

from conftest import ROOT

SMOKE = str(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", "--out", str(root), "--classes", "3", "--per-class", "6", "--test-per-class", "3",
                 "--size", "40"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-run") / "run"
    code = main(["train", SMOKE, f"data.root={synth}", f"out={out}", "data.img_size=32", "data.resize=36",
                 "train.epochs=2", "--quiet"])
    assert code == 0
    return out


def test_train_writes_a_complete_run_folder(trained):
    for f in ("config.yaml", "labels.json", "metrics.jsonl", "last.pt", "report/test.json", "report/test.md"):
        assert (trained / f).is_file(), f
    assert len(list((trained / "report" / "explain").glob("*.png"))) == 2
    labels = json.loads((trained / "labels.json").read_text())
    assert len(labels["class_names"]) == 3
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "test" and any(x["kind"] == "train" for x in lines)


def test_eval_predict_explain(trained, synth, capsys, tmp_path):
    code, out, _ = run(capsys, "eval", trained, "--quiet")
    assert code == 0 and "test: top-1" in out and "on 9 images" in out
    assert (trained / "report" / "eval-test.json").is_file()
    code, out, _ = run(capsys, "eval", trained / "last.pt", "--json", "--quiet")
    assert code == 0 and json.loads(out)["num_images"] == 9

    folder = next((synth / "images").iterdir())
    code, out, _ = run(capsys, "predict", trained, folder, "--topk", "2")
    names = json.loads((trained / "labels.json").read_text())["class_names"]
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 9 and all(any(n in line for n in names) for line in lines)
    code, out, _ = run(capsys, "predict", trained, next(folder.iterdir()), "--json")
    top = json.loads(out)[0]["top"]
    assert code == 0 and len(top) == 3 and abs(sum(p["prob"] for p in top) - 1) < 1e-4

    code, out, _ = run(capsys, "explain", trained, folder, "--out", tmp_path / "ov")
    assert code == 0 and len(list((tmp_path / "ov").glob("*.png"))) == 9


def test_export_writes_a_loadable_program_and_a_complete_sidecar(trained, tmp_path, capsys):
    code, out, _ = run(capsys, "export", trained, tmp_path / "model.pt2")
    assert code == 0 and "batch dimension dynamic" in out
    program = torch.export.load(str(tmp_path / "model.pt2"))
    meta = json.loads((tmp_path / "model.pt2.json").read_text())
    assert len(meta["class_names"]) == 3 and meta["input"]["shape"] == ["batch", 3, 32, 32]
    pre = meta["preprocessing"]
    assert (pre["resize"], pre["resize_mode"], pre["img_size"]) == (36, "square", 32) and len(pre["mean"]) == 3
    assert meta["method"] == "baseline" and meta["check"]["max_abs_diff"] < 1e-4
    for batch in (1, 3):
        assert program.module()(torch.randn(batch, 3, 32, 32)).shape == (batch, 3)
    code, _, err = run(capsys, "export", trained, tmp_path / "model.tflite")
    assert code == 1 and "unknown format '.tflite'" in err
    # an ONNX export beside it keeps the .pt2's sidecar: each file has its own
    assert run(capsys, "export", trained, tmp_path / "model.onnx")[0] == 0
    assert json.loads((tmp_path / "model.onnx.json").read_text())["format"] == "onnx"
    assert json.loads((tmp_path / "model.pt2.json").read_text())["format"] == "torch.export"


def test_localize_reports_against_the_synthetic_ground_truth(trained, capsys):
    code, out, _ = run(capsys, "localize", trained, "--json")
    r = json.loads(out)
    assert code == 0 and r["images"] == 9 and r["maps"]
    for m in r["maps"].values():
        assert 0 <= m["pointing"] <= 1 and 0 < m["object_area_fraction"] < 1


def test_localization_metrics_on_hand_cases():
    import numpy as np

    from fgvc.localization import box_metrics, map_metrics

    gt = np.array([[10.0, 10.0, 29.0, 29.0]])
    parts = np.array([[[15.0, 15.0, 1.0], [50.0, 50.0, 1.0], [0.0, 0.0, 0.0]]])
    same = box_metrics(gt.copy(), gt, parts, size=64)
    assert same["iou"] == 1.0 and same["object_covered"] == 1.0 and same["parts_inside"] == 0.5
    assert same["random_iou"] < 1.0
    heat = torch.zeros(1, 64, 64)
    heat[0, 20, 20] = 1.0
    m = map_metrics(heat, gt, size=64)
    assert m["pointing"] == 1.0 and m["mass_in_object"] == 1.0 and m["object_area_fraction"] == 400 / 4096


def test_verify_reports_counts(synth, capsys):
    code, out, _ = run(capsys, "data", "verify", synth, "--dataset", "cub")
    assert code == 0
    assert "3 classes (expected 3)" in out and "train: 18 images ok" in out and "test: 9 images ok" in out
    assert "unreadable images: 0" in out


def test_baseline_finetunes_from_a_local_weight_file_offline(synth, tmp_path, capsys, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.save(timm.create_model("test_resnet", num_classes=11).state_dict(), tmp_path / "pretrained.pth")
    code, out, err = run(capsys, "train", SMOKE, f"data.root={synth}", f"out={tmp_path / 'ft'}", "data.img_size=32",
                         "data.resize=36", "train.epochs=1", "model.pretrained=true",
                         f"model.pretrained_file={tmp_path / 'pretrained.pth'}", "--quiet")
    assert code == 0, err
    state = torch.load(tmp_path / "pretrained.pth")
    from fgvc.inference import load_run

    run_ = load_run(tmp_path / "ft")  # the checkpoint alone restores the model (no weight file needed)
    assert run_.model.backbone.conv1[0].weight.shape == state["conv1.0.weight"].shape


@pytest.mark.parametrize("args,message", [
    (["train.lrr=0.1"], "error: unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["data.root=/nonexistent/CUB"], "error: dataset root not found: /nonexistent/CUB"),
    (["model.backbone=resnet5O"], "error: model.backbone: 'resnet5O' is not a timm model"),
    (["model.method=transfgg"], "error: unknown method 'transfgg'"),
])
def test_config_errors_are_one_line(capsys, tmp_path, args, message):
    code, out, err = run(capsys, "train", SMOKE, f"out={tmp_path / 'x'}", *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_corrupt_image_and_bad_label_are_one_line(synth, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(synth, bad)
    first = (bad / "images.txt").read_text().split()[1]
    (bad / "images" / first).write_bytes(b"not a jpeg")
    code, _, err = run(capsys, "train", SMOKE, f"data.root={bad}", f"out={tmp_path / 'r1'}", "data.img_size=32",
                       "--quiet", "data.batch_size=18")
    assert code == 1 and "error: cannot read image" in err and first.split("/")[-1] in err and "dataset index" in err
    assert len(err.strip().splitlines()) == 1
    lab = bad / "image_class_labels.txt"
    lab.write_text(lab.read_text().replace("\n2 1\n", "\n2 7\n"))
    code, _, err = run(capsys, "train", SMOKE, f"data.root={bad}", f"out={tmp_path / 'r2'}")
    assert code == 1 and "image_class_labels.txt:2: class 7 of image 2 is out of range" in err


def test_info_commands(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0 and "baseline" in out and "paper:" in out
    code, out, _ = run(capsys, "data", "list")
    assert code == 0 and all(n in out for n in ("cub", "nabirds", "cars", "dogs", "aircraft", "flowers", "pets",
                                                  "inat", "folder", "csv"))


def test_bench_runs_on_cpu(capsys):
    code, out, _ = run(capsys, "bench", "baseline", "--backbone", "test_resnet", "--img-size", "32", "--batch", "4",
                       "--steps", "2", "--warmup", "1", "--device", "cpu", "--loader-workers", "0", "--json")
    r = json.loads(out)
    assert code == 0 and r["train_img_per_s"] > 0 and r["infer_img_per_s"] > 0 and r["loader_img_per_s"] > 0


def test_entry_point_help_and_error_without_traceback(tmp_path):
    exe = [sys.executable, "-m", "fgvc"]
    for sub in ([], ["train"], ["eval"], ["predict"], ["explain"], ["data", "synth"], ["data", "verify"], ["bench"],
                ["methods"], ["demo"], ["export"], ["localize"]):
        r = subprocess.run(exe + sub + ["--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: fgvc" in r.stdout
        if not sub:  # the description names every method family
            assert "CAL, PMG" in " ".join(r.stdout.split())
    r = subprocess.run(exe + ["eval", str(tmp_path / "no-run")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("error: checkpoint or run folder not found")
    assert "Traceback" not in r.stderr


def test_progress_in_a_pipe_is_one_plain_line_per_epoch_and_bars_only_on_a_terminal(synth, tmp_path):
    """Piped (a log file), train, eval and data verify write no carriage-return frames, and train says each epoch in
    one line; on a terminal, the same training draws its bar."""
    exe = [sys.executable, "-m", "fgvc"]
    train = exe + ["train", SMOKE, f"data.root={synth}", "data.img_size=32", "data.resize=36", "train.epochs=3",
                   "eval.explain_samples=0", f"out={tmp_path / 'run'}"]
    piped = subprocess.run(train, capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stdout + piped.stderr
    epochs = [line for line in piped.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" (")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], piped.stdout
    assert all("loss" in line and "images/s" in line for line in epochs)
    for command in (["eval", str(tmp_path / "run")], ["data", "verify", str(synth), "--dataset", "cub"]):
        r = subprocess.run(exe + command, capture_output=True, text=True)
        assert r.returncode == 0 and "\r" not in r.stdout + r.stderr, (command, r.stderr)
    import fcntl
    import pty
    import struct
    import termios

    main_fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    shown = subprocess.run(train[:-1] + [f"out={tmp_path / 'tty'}"], stdout=subprocess.PIPE, stderr=terminal,
                           text=True)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main_fd)
    assert shown.returncode == 0 and b"\r" in drawn and b"train:" in drawn


@pytest.mark.parametrize("method", __import__("fgvc").list_methods())
def test_every_method_trains_evaluates_predicts_explains_and_exports(method, smoke_run, tmp_path, capsys):
    """The issues' checks for every method: its smoke recipe trained on the synthetic data through the CUB
    reader, then eval, predict and explain on the checkpoint, and exports that give the run's outputs."""
    out = smoke_run(method)
    from fgvc.run import load_run

    image = load_run(out, device="cpu").records("test")[0].path
    code, out_eval, err = run(capsys, "eval", out, "--quiet")
    assert code == 0 and "top-1" in out_eval, err
    code, out_pred, err = run(capsys, "predict", out / "last.pt", image, "--json", "--topk", "3")
    assert code == 0 and len(json.loads(out_pred)[0]["top"]) == 3, err
    code, _, err = run(capsys, "explain", out, image, "--out", tmp_path / "overlays")
    assert code == 0 and len(list((tmp_path / "overlays").glob("*.png"))) == 1, err
    # export: torch.export and ONNX, batch dimension dynamic, outputs equal the run's at batch 1 and 3
    import onnxruntime

    from fgvc.run import load_run

    loaded = load_run(out, device="cpu")
    program = tmp_path / "m.pt2"
    assert run(capsys, "export", out, program)[0] == 0
    assert run(capsys, "export", out, tmp_path / "m.onnx")[0] == 0
    exported = torch.export.load(str(program)).module()
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    size = loaded.preprocess.img_size
    for batch in (1, 3):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            ref = loaded.model(x)
        assert torch.allclose(exported(x), ref, atol=1e-5), method
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-4), method


def test_predict_over_a_folder_skips_and_names_an_unreadable_image(trained, synth, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = sorted((synth / "images").rglob("*.jpg"))[:3]
    for i, p in enumerate(good):
        shutil.copy(p, folder / f"good{i}.jpg")
    data = good[0].read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    code, out, err = run(capsys, "predict", trained, folder, "--topk", "2")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and all("good" in line for line in lines)
    assert "cut.jpg" in err and "3 of 4 images predicted; 1 unreadable" in err
    code, out, err = run(capsys, "explain", trained, folder, "--out", tmp_path / "ov")
    assert code == 0 and len(list((tmp_path / "ov").glob("*.png"))) == 3 and "cut.jpg" in err
    code, _, err = run(capsys, "predict", trained, folder, "--topk", "0")
    assert code == 1 and "--topk must be at least 1" in err


def test_every_option_shows_its_default_in_the_help():
    from fgvc.cli import _Help, build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            for sub in getattr(action, "choices", None).values() if isinstance(action.choices, dict) else []:
                yield from parsers(sub)

    missing = []
    for p in parsers(build_parser()):
        text = p.format_help()
        for action in p._actions:
            if not action.option_strings or action.help == "==SUPPRESS==" or action.nargs == 0:
                continue  # positional arguments, flags (their default is off) and --help
            help_text = _Help(p.prog)._get_help_string(action)
            if "default" not in help_text and "(required)" not in help_text:
                missing.append(f"{p.prog} {action.option_strings[0]}")
        assert "usage:" in text
    assert not missing, missing


def test_methods_into_a_closed_pipe_ends_without_a_traceback():
    r = subprocess.run(f"{sys.executable} -m fgvc methods | head -1", shell=True, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() and "Traceback" not in r.stderr and "Error" not in r.stderr


def test_bench_defaults_to_the_methods_recipe_backbone(capsys):
    code, out, err = run(capsys, "bench", "transfg", "--img-size", "64", "--batch", "2", "--steps", "1", "--warmup",
                         "1", "--device", "cpu", "--loader-workers", "-1", "--json")
    r = json.loads(out)
    assert code == 0, err
    assert r["backbone"].startswith("vit_base_patch16_224") and r["method_options"]["slide_step"] == 12


def test_relative_paths_are_stored_absolute(synth, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(synth.parent)
    code, _, err = run(capsys, "train", SMOKE, f"data.root={synth.name}", f"out={tmp_path / 'rel'}",
                       "train.epochs=1", "--quiet")
    assert code == 0, err
    saved = (tmp_path / "rel" / "config.yaml").read_text()
    assert f"root: {synth}" in saved
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "eval", tmp_path / "rel", "--quiet")[0] == 0  # from another folder


def test_hub_weights_without_a_network_fail_in_one_line_within_seconds(tmp_path, capsys, monkeypatch):
    """No cached copy and no route to the hub: one line naming model.pretrained_file, no retries."""
    import time

    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hub, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.time()
    code, _, err = run(capsys, "train", SMOKE, f"out={tmp_path / 'hub'}", "model.pretrained=true", "--quiet")
    assert code == 1 and time.time() - t0 < 15
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot download the pretrained weights of test_resnet" in lines[0]
    assert "model.pretrained_file" in lines[0]


@pytest.mark.slow
def test_a_wheel_holds_the_recipes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("fgvc-*.whl"))).namelist()
    for recipe in ("transfg/cub.yaml", "transfg/_base.yaml", "smoke/wsdan.yaml", "demo.yaml", "baseline/finetune.yaml",
                   "datasets/cars196.yaml", "cal/cub.yaml", "pmg/finetune.yaml"):
        assert f"fgvc/configs/{recipe}" in names, recipe


@pytest.mark.parametrize("method,backbone,expect", [
    ("wsdan", "resnet18", "note: wsdan features: layer3 (stride 16, 256 channels; method.feature_layer 'Mixed_6e'"),
    ("herbs", "efficientnet_lite0", "note: herbs levels (stages): blocks.2 8x8x40, blocks.4 4x4x112, blocks.6 2x2x320"),
    ("herbs", "convnext_tiny", "note: herbs levels (stages): stages.1 8x8x192, stages.2 4x4x384, stages.3 2x2x768"),
    ("pim", "efficientnet_lite0", "note: pim levels (stages): blocks.2"),
    ("pim", "convnext_tiny", "note: pim levels (stages): stages.1"),
])
def test_a_methods_cub_recipe_trains_on_another_backbone_and_says_what_it_chose(method, backbone, expect, synth,
                                                                                 tmp_path, capsys):
    """The recipes name Inception-V3's Mixed_6e and Swin's merged levels; on other backbones the methods take
    the equivalent stages and the run log names them."""
    code, out, err = run(capsys, "train", "--method", method, "--dataset", "cub", "--data-root", synth,
                         "--backbone", backbone, "model.pretrained=false", f"out={tmp_path / 'r'}", "data.img_size=64",
                         "data.resize=72", "data.batch_size=4", "train.grad_accum=1", "train.steps=2",
                         "data.num_workers=0", "eval.explain_samples=0", "device=cpu", "--quiet")
    assert code == 0, err
    assert expect in out, out


def test_bench_data_errors_are_one_line(capsys, tmp_path):
    # no SET parses (the default set), and the missing data folder is named in one line
    code, _, err = run(capsys, "bench-data", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "bd"))
    assert code == 1 and "no shared data found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "d" / "flowers17").mkdir(parents=True)
    for f in ("efficientnet_lite0_in1k.safetensors", "vit_tiny_patch16_224_in1k.safetensors"):
        (tmp_path / "d" / f).write_bytes(b"")
    code, _, err = run(capsys, "bench-data", "cnnn", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "bd"))
    assert code == 1 and "unknown set(s) ['cnnn']" in err and "cnn, vit" in err
    code, _, err = run(capsys, "bench-data", "--run", "nope", "--data", str(tmp_path / "d"))
    assert code == 1 and "unknown run(s) ['nope']" in err


def test_bench_profile_writes_a_trace_and_an_op_table(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "baseline", "--backbone", "test_resnet", "--profile")
    assert code == 1 and "--out" in err and len(err.strip().splitlines()) == 1
    code, _, _ = run(capsys, "bench", "baseline", "--backbone", "test_resnet", "--img-size", "32", "--batch", "2",
                     "--steps", "1", "--warmup", "1", "--device", "cpu", "--loader-workers", "-1", "--json",
                     "--profile", "--out", str(tmp_path))
    traces = list((tmp_path / "profile").glob("*.trace.json"))
    tables = list((tmp_path / "profile").glob("*.txt"))
    assert code == 0 and len(traces) == 1 and len(tables) == 1
    assert json.loads(traces[0].read_text())["traceEvents"] and "Self CPU" in tables[0].read_text()
