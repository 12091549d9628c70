"""fgvc compare --tune: every row tuned the same way by Optuna on a validation split, with the test split never read;
one study shared by two processes without a trial run twice; a compare killed in its second trial continues
without running the first again; and every bad input refused in one line before anything is written. Tiny runs:
a random test_resnet on a small synthetic set in the CUB layout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def birds(tmp_path_factory) -> Path:
    from fgvc.data.synthetic import write_cub_layout

    return write_cub_layout(tmp_path_factory.mktemp("tune") / "birds", classes=3, train_per_class=10,
                            test_per_class=4, size=40, seed=3)


def arguments(root: Path, out: Path, *extra: str, tune: int = 2, epochs: int = 2) -> list[str]:
    return ["compare", str(root), "--dataset", "cub", "--backbone", "test_resnet", "--methods", "baseline",
            "--epochs", str(epochs), "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--tune", str(tune),
            "--out", str(out), "model.pretrained=false", "data.num_workers=0", *extra]


def fgvc(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run([sys.executable, "-m", "fgvc", *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


def study(out: Path, key: str = "test_resnet/baseline") -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(out / "study.journal")
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    return optuna.load_study(study_name=key, storage=storage).get_trials()


def epochs_trained(run_dir: Path) -> int:
    return sum(1 for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "epoch")


def test_tuning_never_reads_the_test_split(birds, tmp_path):
    """Every test label changed: the trials (settings and validation accuracies) and the chosen setting stay the
    same; only the final test differs."""
    r = fgvc(*arguments(birds, tmp_path / "a"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\r" not in r.stdout and "trial 2 of 2" in r.stdout and "on the whole training set" in r.stdout
    moved = tmp_path / "moved"
    shutil.copytree(birds, moved)
    split = dict(line.split() for line in (moved / "train_test_split.txt").read_text().splitlines())
    labels = [line.split() for line in (moved / "image_class_labels.txt").read_text().splitlines()]
    (moved / "image_class_labels.txt").write_text("".join(
        f"{i} {int(c) % 3 + 1 if split[i] == '0' else c}\n" for i, c in labels))  # every test image relabelled
    r = fgvc(*arguments(moved, tmp_path / "b"))
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = study(tmp_path / "a"), study(tmp_path / "b")
    assert [(t.params, t.intermediate_values, t.state, t.value) for t in a] == \
        [(t.params, t.intermediate_values, t.state, t.value) for t in b]
    summaries = [json.loads((tmp_path / x / "results.json").read_text()) for x in ("a", "b")]
    assert summaries[0]["rows"][0]["chosen"] == summaries[1]["rows"][0]["chosen"]
    assert summaries[0]["rows"][0]["trials"] and summaries[0]["tune"] == 2
    page = (tmp_path / "a" / "index.html").read_text()
    assert "id='tuning'" in page and "Chosen:" in page and "validation split of 20%" in page
    # the same folder with another budget: its study is not mixed with trials of other settings
    r = fgvc(*arguments(birds, tmp_path / "a", epochs=3))
    assert r.returncode == 1 and "holds trials run with other settings (train.epochs=2, train.epochs=3)" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_two_processes_share_one_study_and_run_no_trial_twice(birds, tmp_path):
    out = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-m", "fgvc", *arguments(birds, out, tune=4)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), logs
    trials = [t for t in study(out) if t.number < 4]
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["pid"] for t in trials}) == 2, [t.user_attrs for t in trials]  # both took trials
    for t in trials:  # each trial ran once: its folder holds one run of at most its epochs
        assert epochs_trained(out / "trials" / "test_resnet" / "baseline" / f"trial-{t.number}") <= 2
    assert epochs_trained(out / "runs" / "test_resnet" / "baseline") == 2  # the final run: one process trained it
    assert sum("started test_resnet" in log or "started baseline on test_resnet with" in log for log in logs) == 1


def test_a_compare_killed_in_its_second_trial_continues_without_running_the_first_again(birds, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fgvc", *arguments(birds, out, epochs=3)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    second = out / "trials" / "test_resnet" / "baseline" / "trial-1"
    deadline = time.time() + 300
    while time.time() < deadline and not (second / "last.pt").is_file():
        time.sleep(0.2)
    assert (second / "last.pt").is_file(), "the second trial never saved a checkpoint"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = out / "trials" / "test_resnet" / "baseline" / "trial-0" / "last.pt"
    stamp = first.stat().st_mtime_ns
    r = fgvc(*arguments(birds, out, epochs=3))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "continuing baseline on test_resnet, trial 2 of 2" in r.stdout and "trial 1 of 2" not in r.stdout
    assert first.stat().st_mtime_ns == stamp
    assert sorted(t.number for t in study(out)) == [0, 1]
    assert epochs_trained(second) == 3  # continued from its checkpoint, not started again


@pytest.mark.parametrize("extra,message", [
    (["--backbone", "resnet5O"], "model.backbone: 'resnet5O' is not a timm model"),
    (["--dataset", "cubb"], "--dataset: unknown reader or dataset file 'cubb'"),
    (["search={train.lr: {low: 0.1, high: 0.01, log: true}}"], "train.lr: low 0.1 is not below high 0.01"),
    (["search={train.lr: {low: 0, high: 0.01, log: true}}"], "a log scale needs positive bounds"),
    (["--storage", "sqlite:////nonexistent/folder/study.db"], "--storage sqlite:////nonexistent/folder/study.db: "
                                                               "cannot open it"),
    (["--finetune", "full,adapter"], "--finetune: adapter is not a mode"),
])
def test_bad_inputs_are_one_line_before_any_run_and_keep_an_earlier_study(extra, message, birds, tmp_path, capsys):
    from fgvc.cli import main

    out = tmp_path / "kept"
    out.mkdir()
    (out / "study.journal").write_text("an earlier study\n")
    code = main(arguments(birds, out) + extra)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["study.journal"]
    assert (out / "study.journal").read_text() == "an earlier study\n"


def test_a_wrong_path_and_a_validation_split_too_small_are_one_line(birds, tmp_path):
    r = fgvc("compare", "/nonexistent/birds", "--methods", "baseline", "--backbone", "efficientnet_lite0", "--out",
             str(tmp_path / "x"))
    assert r.returncode == 1 and r.stderr == "error: dataset folder not found: /nonexistent/birds\n", r.stderr
    assert not (tmp_path / "x").exists()
    lonely = tmp_path / "lonely"
    shutil.copytree(birds, lonely)
    labels = (lonely / "image_class_labels.txt").read_text().splitlines()
    split = dict(line.split() for line in (lonely / "train_test_split.txt").read_text().splitlines())
    first_three = [i for i, c in (x.split() for x in labels) if c == "3" and split[i] == "1"][:9]
    (lonely / "train_test_split.txt").write_text("".join(
        f"{i} {'0' if i in first_three else s}\n" for i, s in split.items()))  # class 3 keeps one training image
    r = fgvc(*arguments(lonely, tmp_path / "y"))
    assert r.returncode == 1 and "have a single training image" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_the_reader_is_told_from_the_folder_and_a_folder_of_no_layout_is_one_line(birds, tmp_path, capsys):
    """Without --dataset, compare reads the official layout it finds (here CUB's files, one folder down)."""
    from fgvc.cli import main
    from fgvc.compare import Comparison
    from fgvc.compare.preflight import check_inputs

    said = []
    c = Comparison(root=str(birds.parent), dataset="auto", backbones=["test_resnet"], runs=[], out=tmp_path / "o")
    check_inputs(c, said.append)
    assert (c.dataset, c.root) == ("cub", str(birds))
    assert said == [f"reading {birds} as cub (images.txt, train_test_split.txt, image_class_labels.txt); "
                    "--dataset names another reader"]
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "todo.txt").write_text("no images\n")
    code = main(["compare", str(empty), "--backbone", "test_resnet", "--methods", "baseline", "--out",
                 str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no dataset layout fgvc reads was found" in err, err
    assert not (tmp_path / "x").exists()


def test_own_class_folders_without_a_test_split_get_one_held_out_for_every_run(tmp_path):
    """photos/<class>/*.jpg, as the README's first example: compare holds out a seeded test split and says so, in
    its default folder, named after the dataset's."""
    from fakes import jpg

    photos = tmp_path / "photos"
    for c, colour in (("finch", (200, 40, 40)), ("wren", (40, 40, 200))):
        for k in range(10):
            jpg(photos / c / f"{k}.jpg", size=(32, 32), colour=colour)
    r = fgvc("compare", str(photos), "--backbone", "test_resnet", "--methods", "baseline", "--epochs", "1",
             "--img-size", "32", "--batch-size", "8", "--device", "cpu", "model.pretrained=false",
             "data.num_workers=0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "runs" / "compare-photos"  # the default OUT: one per dataset folder
    assert f"reading {photos} as folder (class folders)" in r.stdout
    assert "has no test split: every run holds out the same seeded 20% of each class" in r.stdout
    summary = json.loads((out / "results.json").read_text())
    assert summary["test_images"] == 4  # 2 of each class's 10


def test_a_trial_may_be_a_torchrun_group(birds, tmp_path):
    """--launcher: every run of the comparison (its trials included) is a group of two processes."""
    out = tmp_path / "group"
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2"
    r = fgvc(*arguments(birds, out, tune=1), "--launcher", launcher)
    assert r.returncode == 0, r.stdout + r.stderr
    from fgvc.engine.checkpoint import load_checkpoint

    trial = out / "trials" / "test_resnet" / "baseline" / "trial-0"
    assert load_checkpoint(trial / "last.pt")["world_size"] == 2
    assert load_checkpoint(out / "runs" / "test_resnet" / "baseline" / "last.pt")["world_size"] == 2
    assert [t.state.name for t in study(out)] == ["COMPLETE"]
