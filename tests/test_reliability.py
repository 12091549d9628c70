"""The promises of docs/reliability.md, tested the hard way: real processes killed with SIGKILL and SIGTERM,
torchrun with two gloo processes on the CPU, a NaN on one rank, broken image files.

Every run here is a subprocess of ``tests/_runner.py``, which installs an optional fault (a checkpoint
write that stalls halfway, slow steps, a NaN at a given step and rank) and then runs the ``fgvc`` CLI.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fgvc.engine import checkpoint as ckpt

from conftest import ROOT

RUNNER = str(Path(__file__).with_name("_runner.py"))
SMOKE = str(ROOT / "fgvc" / "configs" / "smoke" / "baseline.yaml")
pytestmark = pytest.mark.slow


def args_for(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", SMOKE, f"data.root={root}", f"out={out}", "data.img_size=32", "data.resize=36",
            "data.batch_size=4", "data.num_workers=0", "train.log_every=1", "eval.explain_samples=0",
            "train.record_sample_ids=true", "--quiet", *extra]


def launch(argv: list[str], env: dict | None = None, torchrun: int = 0) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "--master_port",
               str(random.randint(20000, 40000)), RUNNER, *argv]
    else:
        cmd = [sys.executable, RUNNER, *argv]
    return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(argv, env=None, torchrun=0, timeout=300) -> tuple[int, str]:
    p = launch(argv, env, torchrun)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def params(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


def assert_same_params(a: Path, b: Path, atol: float = 0.0) -> None:
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        if atol:
            assert torch.allclose(pa[k].float(), pb[k].float(), atol=atol, rtol=1e-4), k
        else:
            assert torch.equal(pa[k], pb[k]), k


def sample_ids(run_dir: Path) -> dict[int, str]:
    """Step -> the batch's sample ids; a step logged twice (killed, then redone) keeps its last line."""
    out = {}
    for line in (run_dir / "sample_ids.txt").read_text().splitlines():
        step, _, ids = line.split(" ", 2)
        out[int(step)] = ids
    return out


@pytest.fixture(scope="module")
def reference(synth_root, tmp_path_factory) -> Path:
    """An uninterrupted run: 3 epochs of 8 steps, a checkpoint at every step."""
    out = tmp_path_factory.mktemp("ref") / "run"
    code, log = run(args_for(synth_root, out, "train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=30"))
    assert code == 0, log
    return out


def wait_for(predicate, timeout=120.0, proc=None):
    t = time.time()
    while time.time() - t < timeout:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def test_sigkill_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(reference, synth_root, tmp_path):
    out = tmp_path / "killed"
    argv = args_for(synth_root, out, "train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=30")
    kill_at = random.Random().randint(3, 18)  # a random step of 24, inside an epoch
    p = launch(argv, env={"FGVC_TEST_FAULT": "slow_steps"})
    reached = wait_for(lambda: (out / "sample_ids.txt").exists()
                       and len((out / "sample_ids.txt").read_text().splitlines()) > kill_at, proc=p)
    assert reached, p.communicate()[0]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    killed_at = ckpt.load_checkpoint(out / "last.pt")["step"]
    assert 0 < killed_at < 24
    code, log = run(argv + ["--resume", "auto"])
    assert code == 0, log
    assert f"resumed from {out / 'last.pt'} at step {killed_at}" in log
    assert_same_params(out / "last.pt", reference / "last.pt")
    assert sample_ids(out) == sample_ids(reference)  # the same batches, in the same order


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one(reference, synth_root, tmp_path):
    out = tmp_path / "torn"
    argv = args_for(synth_root, out, "train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=30")
    marker = tmp_path / "stalled"
    # The 9th file written is last.pt of step 5 (each step writes last.pt, then step-N.pt).
    p = launch(argv, env={"FGVC_TEST_FAULT": "torn_checkpoint", "FGVC_TEST_N": "9", "FGVC_TEST_MARKER": str(marker)})
    assert wait_for(marker.exists, proc=p), p.communicate()[0]
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = list(out.glob(".last.pt.tmp-*"))
    assert partial, "the torn temporary file should be there"
    state = ckpt.load_checkpoint(out / "last.pt")  # the previous checkpoint, complete
    assert state["step"] == 4
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(partial[0])
    code, log = run(argv + ["--resume", "auto"])
    assert code == 0, log
    assert not list(out.glob(".last.pt.tmp-*"))  # cleaned up
    assert_same_params(out / "last.pt", reference / "last.pt")


def test_sigterm_saves_at_a_step_boundary_and_exits_75(reference, synth_root, tmp_path):
    out = tmp_path / "term"
    argv = args_for(synth_root, out, "train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=30")
    p = launch(argv, env={"FGVC_TEST_FAULT": "slow_steps"})
    assert wait_for(lambda: (out / "sample_ids.txt").exists()
                    and len((out / "sample_ids.txt").read_text().splitlines()) > 5, proc=p)
    p.send_signal(signal.SIGTERM)
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 75, log
    assert "continue with --resume auto" in log
    stopped = ckpt.load_checkpoint(out / "last.pt")["step"]
    assert 5 <= stopped < 24
    code, log = run(argv + ["--resume", "auto"])
    assert code == 0, log
    assert_same_params(out / "last.pt", reference / "last.pt")


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_exits_75(reference, synth_root, tmp_path):
    """What `timeout -s TERM` and batch schedulers do: the signal reaches the DataLoader workers too. They leave
    it to the main process, which saves at the step boundary; one line, no traceback, and the resumed run
    ends where the uninterrupted one did (workers change neither the order nor the augmentation)."""
    out = tmp_path / "group"
    argv = args_for(synth_root, out, "train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=30",
                    "data.num_workers=2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "FGVC_TEST_FAULT": "slow_steps"}
    p = subprocess.Popen([sys.executable, RUNNER, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    assert wait_for(lambda: (out / "sample_ids.txt").exists()
                    and len((out / "sample_ids.txt").read_text().splitlines()) > 5, proc=p)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, err
    assert "Traceback" not in err and "killed by signal" not in err, err
    assert err.count("state saved to") == 1 and err.strip().splitlines()[-1].startswith("stopped by a signal")
    code, log = run(argv + ["--resume", "auto"])
    assert code == 0, log
    assert_same_params(out / "last.pt", reference / "last.pt")


def test_resume_with_another_world_size_is_refused(reference, synth_root, tmp_path):
    out = tmp_path / "ws"
    shutil.copytree(reference, out)
    code, log = run(args_for(synth_root, out, "train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=30",
                             "data.batch_size=2", "--resume", "auto"), torchrun=2)
    assert code != 0 and "saved by 1 process(es), this run has 2" in log


VIT_RUN = ["model.backbone=test_vit", "data.img_size=32", "train.epochs=2", "train.keep_checkpoints=0",
           "train.optimizer=sgd", "train.lr=0.05"]


@pytest.fixture(scope="module")
def one_process(synth_root, tmp_path_factory) -> Path:
    """One process at the global batch of 8: what two processes (or two nodes) of batch 4 must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    code, log = run(args_for(synth_root, out, *VIT_RUN, "data.batch_size=8"))
    assert code == 0, log
    return out


@pytest.mark.parametrize("mode", ["lora", "linear"])
def test_a_fine_tuning_mode_trains_the_same_in_two_processes_and_under_bf16(mode, synth_root, tmp_path):
    """LoRA and the linear probe under DDP: two processes of batch 4 equal one of batch 8; and under bf16 autocast
    they train to nearly the float32 weights."""
    extra = [*VIT_RUN, f"model.finetune={mode}", "model.lora.rank=4"]
    one, two, bf16 = tmp_path / "one", tmp_path / "two", tmp_path / "bf16"
    code, log = run(args_for(synth_root, one, *extra, "data.batch_size=8"))
    assert code == 0, log
    code, log = run(args_for(synth_root, two, *extra, "data.batch_size=4"), torchrun=2)
    assert code == 0, log
    trained = [k for k in params(one / "last.pt") if "lora_B" in k or k.startswith("head.")]
    assert trained and any(params(one / "last.pt")[k].abs().sum() > 0 for k in trained)
    assert_same_params(one / "last.pt", two / "last.pt", atol=1e-5)
    code, log = run(args_for(synth_root, bf16, *extra, "data.batch_size=8", "train.amp=bf16"))
    assert code == 0, log
    full, low = params(one / "last.pt"), params(bf16 / "last.pt")
    assert any(not torch.equal(full[k], low[k]) for k in trained)  # autocast did run in bf16
    assert_same_params(one / "last.pt", bf16 / "last.pt", atol=2e-2)  # bf16 keeps about three digits


def test_two_processes_match_one_with_the_same_global_batch(synth_root, tmp_path, one_process):
    one = one_process
    two = tmp_path / "two"
    code, log = run(args_for(synth_root, two, *VIT_RUN, "data.batch_size=4"), torchrun=2)
    assert code == 0, log
    assert_same_params(one / "last.pt", two / "last.pt", atol=1e-5)
    # one set of files, written once by rank 0
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    steps = [json.loads(x)["step"] for x in (two / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == sorted(set(steps)) and len(steps) == 8
    t1 = json.loads((one / "report" / "test.json").read_text())
    t2 = json.loads((two / "report" / "test.json").read_text())
    assert t2["num_images"] == t1["num_images"] == 16 and abs(t1["top1"] - t2["top1"]) < 1e-6
    # the same images at every step: rank 0's shard is every other image of the single process's batch
    ids1, ids2 = sample_ids(one), sample_ids(two)
    for step, ids in ids2.items():
        assert ids.split(",") == ids1[step].split(",")[0::2]


def test_nan_on_one_rank_stops_every_rank_before_the_update(synth_root, tmp_path):
    out = tmp_path / "nan"
    argv = args_for(synth_root, out, "train.epochs=2", "train.ckpt_every=1", "train.keep_checkpoints=30",
                    "data.batch_size=2", "model.method=nan_at_step")
    code, log = run(argv, env={"FGVC_TEST_FAULT": "nan", "FGVC_TEST_NAN_STEP": "5", "FGVC_TEST_NAN_RANK": "1"},
                    torchrun=2)
    assert code != 0 and "non-finite loss or gradient at step 6" in log, log
    stopped = ckpt.load_checkpoint(out / "nonfinite.pt")
    assert stopped["step"] == 5
    assert_same_params(out / "nonfinite.pt", out / "step-5.pt")  # step 6 changed nothing
    assert not (out / "step-6.pt").exists()


def test_bad_images_are_listed_raised_or_skipped(synth_root, tmp_path, capsys):
    from fgvc.cli import main

    root = tmp_path / "bad"
    shutil.copytree(synth_root, root)
    lines = (root / "images.txt").read_text().split("\n")
    split = dict(line.split() for line in (root / "train_test_split.txt").read_text().split("\n") if line)
    train = [line.split()[1] for line in lines if line and split[line.split()[0]] == "1"]
    broken = {train[1]: b"", train[5]: b"plain text, not a jpeg\n"}
    data = (root / "images" / train[9]).read_bytes()
    broken[train[9]] = data[: len(data) // 2]
    for rel, content in broken.items():
        (root / "images" / rel).write_bytes(content)
    from PIL import Image

    Image.open(root / "images" / train[2]).convert("CMYK").save(root / "images" / train[2], format="JPEG")
    Image.open(root / "images" / train[3]).convert("L").save(root / "images" / train[3], format="JPEG")

    code = main(["data", "verify", str(root), "--dataset", "cub"])
    out = capsys.readouterr().out
    assert code == 3 and "unreadable images: 3" in out
    listed = [line.strip().split(" (index")[0] for line in out.splitlines() if "(index" in line]
    assert sorted(Path(p).name for p in listed) == sorted(Path(p).name for p in broken)

    code, log = run(args_for(root, tmp_path / "raise", "train.epochs=1"))
    assert code == 1 and "error: cannot read image" in log and "dataset index" in log
    assert any(Path(rel).name in log for rel in broken)

    code, log = run(args_for(root, tmp_path / "skip", "train.epochs=2", "data.bad_data=skip"))
    assert code == 0, log
    assert "skipped 3 unreadable training image(s)" in log
    report = json.loads((tmp_path / "skip" / "report" / "test.json").read_text())
    assert report["skipped_unreadable_train"] == 3

    code, log = run(args_for(root, tmp_path / "budget", "train.epochs=1", "data.bad_data=skip", "data.skip_budget=2"))
    assert code == 1 and "exceed data.skip_budget=2" in log


def test_training_out_of_memory_is_a_clear_error(synth_root, tmp_path):
    code, log = run(args_for(synth_root, tmp_path / "oom", "train.epochs=1"), env={"FGVC_TEST_FAULT": "oom"})
    assert code == 1 and "error: out of memory at data.batch_size=4 per process" in log
    assert "data.batch_size=2 train.grad_accum=2 keeps the global batch" in log


def test_a_data_error_on_rank_zero_stops_every_rank(synth_root, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(synth_root, bad)
    (bad / "classes.txt").write_text("1 only_one_class\n")  # labels 2..4 are now out of range
    code, log = run(args_for(bad, tmp_path / "r"), torchrun=2, timeout=180)
    assert code != 0 and log.count("error: ") == 2 and "out of range" in log  # both ranks, no hang


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_one_host_train_checkpoint_and_evaluate_as_one_run(synth_root, tmp_path, one_process):
    """Two torchrun agents as two nodes (c10d rendezvous on 127.0.0.1, gloo, one process each): one run, the
    same parameters as one process with the same global batch."""
    one = one_process
    nodes = tmp_path / "nodes"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=fgvc-test",
                                f"--node_rank={rank}", "--max-restarts=0", RUNNER,
                                *args_for(synth_root, nodes, *VIT_RUN, "data.batch_size=4"), "--resume", "auto"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for rank in (0, 1)]
    logs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], logs
    assert_same_params(one / "last.pt", nodes / "last.pt", atol=1e-5)
    t1 = json.loads((one / "report" / "test.json").read_text())
    t2 = json.loads((nodes / "report" / "test.json").read_text())
    assert t2["num_images"] == t1["num_images"] == 16 and abs(t1["top1"] - t2["top1"]) < 1e-6
    assert ckpt.load_checkpoint(nodes / "last.pt")["world_size"] == 2
    assert sum("test: top-1" in x for x in logs) == 1  # rank 0 reports, once


def test_torchrun_restarts_a_killed_worker_from_last_pt_to_the_same_parameters(synth_root, tmp_path):
    """--max-restarts=1: a worker SIGKILLed mid-run; torchrun restarts the group, which continues from last.pt
    (--resume auto) and ends with the parameters of an uninterrupted run."""
    common = ["train.epochs=3", "train.ckpt_every=1", "train.keep_checkpoints=0", "data.batch_size=2",
              "--resume", "auto"]
    straight = tmp_path / "straight"
    code, log = run(args_for(synth_root, straight, *common), torchrun=2)
    assert code == 0, log
    pids, killed = tmp_path / "pids", tmp_path / "killed"
    pids.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1", "--master_port",
           str(free_port()), RUNNER, *args_for(synth_root, killed, *common)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "FGVC_TEST_FAULT": "slow_steps",
           "FGVC_TEST_PIDS": str(pids)}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def mid_run() -> bool:
        try:
            return ckpt.load_checkpoint(killed / "last.pt")["step"] >= 3
        except Exception:  # not written yet
            return False

    assert wait_for(mid_run, proc=p, timeout=180), p.communicate()[0]
    victim = int((pids / "rank-1.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert "resumed from" in log and int((pids / "rank-1.pid").read_text()) != victim, log
    assert_same_params(straight / "last.pt", killed / "last.pt")

