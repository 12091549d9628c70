"""``make gpu-check`` (``fgvc gpu-check``): one command that proves every feature of fgvc on a GPU.

For each method, on its paper recipe's backbone at the recipe's resolution and batch, with random weights
(nothing is downloaded) on a small synthetic dataset written at the start:

1. training in the recipe's precision (bf16 autocast on CUDA), stopped by a SIGTERM in the middle and
   continued with ``--resume auto`` to the end, with the final test, report and overlays;
2. ``eval``, ``predict``, ``explain`` and ``localize`` through a loaded run;
3. ``export`` to ``.pt2``, loaded back, outputs compared with the run's own at batches 1 and 3.

Then: one method trained with ``train.compile=true``; ``fgvc train`` as a subprocess under a process-group
SIGTERM with DataLoader workers (what ``timeout`` and batch schedulers send), which must exit 75 and resume;
and ``fgvc bench`` for the headline settings, each beside the plain step of its backbone at the same input
in the same process. It prints one table (method, OK/failed, train images/s, peak GiB, ratio to the plain
step, inference images/s), writes it with every figure to ``OUT/gpu-check.json``, and exits non-zero if
anything failed. Without CUDA it says so in one line and runs the same path at tiny sizes on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..report.tables import markdown_table

# The headline settings (PERFORMANCE.md): method -> bench overrides; the rest comes from the paper recipe.
HEADLINE = {"transfg": {}, "rams_trans": {}, "wsdan": {}, "dbgce": {}, "herbs": {"batch": 8}, "pim": {"batch": 8},
            "cal": {}, "pmg": {}}
# Official codes' figures on the H200, from the project's PERFORMANCE.md (not re-measured by this command).
OFFICIAL_H200 = {"transfg": 73.1, "wsdan": 108.3, "herbs": 52.6}


@contextlib.contextmanager
def signal_during_step(cls: type, call: int, signum: int = signal.SIGTERM):
    """Sends ``signum`` to this process from inside the ``call``-th ``training_step`` of method class ``cls``."""
    original, count = cls.training_step, [0]

    def step(self, *args, **kwargs):
        count[0] += 1
        if count[0] == call:
            os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    cls.training_step = step
    try:
        yield
    finally:
        cls.training_step = original


class Timer:
    def __init__(self):
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = round(time.perf_counter() - t0, 2)


def tiny_overrides(method: str) -> list[str]:
    """The smoke recipe's tiny backbone and size (the CPU form of the check)."""
    from ..config import read_yaml
    from ..recipes import RECIPES

    smoke = read_yaml(RECIPES / "smoke" / f"{method}.yaml")
    model, data = smoke["model"], smoke["data"]
    items = [f"model.backbone={model['backbone']}", f"data.img_size={data['img_size']}",
             f"data.resize={data['resize']}", "data.batch_size=4", "train.grad_accum=1", "train.amp=none"]
    if model.get("backbone_args"):
        items.append("model.backbone_args=" + json.dumps(model["backbone_args"]))
    items += [f"method.{k}={json.dumps(v)}" for k, v in (smoke.get("method") or {}).items()]
    return items


def functional(method: str, data_root: Path, out: Path, device: str, tiny: bool, log: Callable) -> dict[str, Any]:
    """Train (killed and resumed), eval, predict, explain, localize, export for one method."""
    from ..config import load_config
    from ..engine.trainer import train
    from ..errors import Preempted
    from ..export import export_run
    from ..inference import Predictor, evaluate_run
    from ..localization import localization_report
    from ..methods import get_method
    from ..recipes import paper_recipe
    from ..run import load_run

    timer = Timer()
    run_dir = out / "runs" / method
    overrides = ["data.dataset=synthetic", f"data.root={data_root}", "model.pretrained=false", f"out={run_dir}",
                 f"device={device}", "train.steps=4", "train.warmup_steps=1", "train.log_every=1",
                 "train.learning_check=ignore", "train.keep_checkpoints=0", "eval.explain_samples=2",
                 "data.eval_batch_size=8", f"data.num_workers={0 if tiny else 4}"]
    if tiny:
        overrides += tiny_overrides(method)
    cfg = load_config(paper_recipe(method), overrides)
    result: dict[str, Any] = {"backbone": cfg.model.backbone, "img_size": cfg.data.img_size,
                              "batch": cfg.data.batch_size, "grad_accum": cfg.train.grad_accum}
    with timer("train_until_sigterm"):
        try:
            with signal_during_step(get_method(method), call=3):  # inside the first or second optimizer step
                train(cfg, progress=False)
            raise AssertionError("the SIGTERM did not stop the run")
        except Preempted:
            pass
    with timer("resume_to_end"):
        again = load_config(paper_recipe(method), overrides)
        done = train(again, resume="auto", progress=False)
    assert done.steps == 4 and done.test is not None, f"resumed run ended at step {done.steps}"
    for f in ("report/index.html", "report/test.json", "last.pt"):
        assert (run_dir / f).is_file(), f"missing {f}"
    overlays = list((run_dir / "report" / "explain").glob("*.png"))
    assert len(overlays) == 2, f"{len(overlays)} overlays"
    with timer("load_run"):
        run = load_run(run_dir, device=device)
    with timer("eval"):
        report = evaluate_run(run, progress=False)
    images = [r.path for r in run.records("test")[:4]]
    with timer("predict"):
        top = Predictor(run).predict(images, topk=3)
        assert all(len(t) == 3 for t in top)
    with timer("explain"):
        assert len(Predictor(run).explain(images[:2], out / "explain" / method)) == 2
    with timer("localize"):
        loc = localization_report(run, limit=8)
    with timer("export_pt2"):
        exported = export_run(run, out / "export" / f"{method}.pt2", device=device)
    assert exported.max_abs_diff < (0.05 if run.device.type == "cuda" else 1e-4), exported.max_abs_diff
    result.update(test_top1=report["top1"], localize_maps=len(loc["maps"]), localize_boxes=len(loc["boxes"]),
                  export_max_abs_diff=exported.max_abs_diff, seconds=timer.parts)
    log(f"{method}: trained (SIGTERM at step 2, resumed to 4), eval, predict, explain, localize, export ok "
        f"({sum(timer.parts.values()):.0f} s)")
    return result


def compiled_training(method: str, data_root: Path, out: Path, device: str, tiny: bool) -> dict[str, Any]:
    """A short run with ``train.compile=true``: it must train, test and report like the eager one (with Inductor on
    a GPU; at tiny sizes on the CPU with the aot_eager backend)."""
    from ..config import load_config
    from ..engine.trainer import train
    from ..recipes import paper_recipe

    overrides = ["data.dataset=synthetic", f"data.root={data_root}", "model.pretrained=false",
                 f"out={out / 'runs' / (method + '-compiled')}", f"device={device}", "train.steps=3",
                 "train.learning_check=ignore", "train.compile=true", "eval.explain_samples=0", "train.log_every=1",
                 "data.num_workers=2"]
    if tiny:  # on the CPU, Dynamo and AOTAutograd without Inductor's C++ code generation (a minute on 2 cores)
        overrides += tiny_overrides(method) + ['train.compile_options={"backend": "aot_eager"}']
    t0 = time.perf_counter()
    res = train(load_config(paper_recipe(method), overrides), progress=False)
    return {"compile_train_seconds": round(time.perf_counter() - t0, 1), "steps": res.steps,
            "test_top1": res.test["top1"]}


def process_group_sigterm(data_root: Path, out: Path, device: str, tiny: bool) -> dict[str, Any]:
    """``fgvc train`` with loader workers, SIGTERM to its whole process group mid-run (as ``timeout`` does):
    exit 75 with the one 'state saved' line and no traceback; then ``--resume auto`` finishes (exit 0)."""
    from ..engine.checkpoint import load_checkpoint

    run_dir = out / "runs" / "sigterm"
    cmd = [sys.executable, "-m", "fgvc", "train", "baseline/cub", "data.dataset=synthetic", f"data.root={data_root}",
           "model.pretrained=false", f"out={run_dir}", f"device={device}", "train.steps=40", "train.warmup_steps=0",
           "train.learning_check=ignore", "train.log_every=1", "data.num_workers=2", "data.batch_size=4",
           "eval.explain_samples=0", "--quiet"] + (["model.backbone=test_resnet", "data.img_size=64", "data.resize=72",
                                                    "train.amp=none"] if tiny else ["data.img_size=224",
                                                                                    "data.resize=256"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        raise AssertionError(f"the run ended before the signal (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 75, f"exit {proc.returncode}: {stderr[-2000:]}"
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr[-2000:]
    assert stderr.count("state saved") == 1, stderr
    saved = int(load_checkpoint(run_dir / "last.pt")["step"])
    assert 0 < saved < 40, f"saved at step {saved}"
    r = subprocess.run(cmd + ["--resume", "auto"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "test: top-1" in r.stdout and "resumed from" in r.stdout, r.stderr[-2000:]
    return {"exit": proc.returncode, "stopped_at_step": saved, "stderr": stderr.strip().splitlines()[-1],
            "resumed": "to step 40"}


def benchmarks(device: str, tiny: bool, out: Path, log: Callable, plain_cache: dict,
               profile: bool = False) -> list[dict[str, Any]]:
    """``fgvc bench`` of the headline settings, each beside its plain backbone step (eager; with ``profile``,
    a torch.profiler trace and the table of each method's costliest operations go to OUT/profile)."""
    from .throughput import bench, loader_throughput

    rows = []
    loader: dict[int, float] = {}
    for method, extra in HEADLINE.items():
        kw: dict[str, Any] = dict(steps=2 if tiny else 10, warmup=1 if tiny else 3, device=device, plain=True,
                                  loader_workers=-1, plain_cache=plain_cache,
                                  profile=out / "profile" if profile else None, **extra)
        if tiny:
            from ..config import read_yaml
            from ..recipes import RECIPES

            smoke = read_yaml(RECIPES / "smoke" / f"{method}.yaml")
            kw.update(backbone=smoke["model"]["backbone"], img_size=smoke["data"]["img_size"], batch=4,
                      backbone_args=smoke["model"].get("backbone_args"), method_options=smoke.get("method"),
                      amp="none")
        try:
            r = bench(method, **kw)
            if not tiny and r["img_size"] not in loader:
                loader[r["img_size"]] = loader_throughput(r["img_size"], r["batch"], min(16, os.cpu_count() or 1),
                                                          seconds=4.0)
            r["loader_img_per_s"] = loader.get(r["img_size"], float("nan"))
            r["ok"] = True
            log(f"bench {method}: {r['train_img_per_s']:.1f} img/s, {r['step_ratio']:.2f}x the plain step")
        except Exception as e:  # noqa: BLE001 - one failed row must not hide the others
            r = {"method": method, "ok": False, "error": f"{e.__class__.__name__}: {e}"}
            log(f"bench {method}: FAILED {r['error']}")
            (out / f"bench-{method}.traceback.txt").write_text(traceback.format_exc())
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.append(r)
    return rows


# Candidate speed-ups measured by `--speed` (issue 13): (method, what, bench overrides), in priority order.
SPEED_VARIANTS = [
    ("wsdan", "one pass over [crop; drop]", dict(method_options={"joint_augmented_pass": True})),
    ("transfg", "rollout in one chunk", dict(method_options={"rollout_chunk": 4096})),
    ("dbgce", "compiled", dict(compile=True)),
    ("wsdan", "compiled", dict(compile=True)),
    ("wsdan", "compiled, CUDA graphs", dict(compile=True, compile_options={"mode": "reduce-overhead"})),
    ("transfg", "compiled", dict(compile=True)),
    ("herbs", "compiled", dict(compile=True, batch=8)),
    ("rams_trans", "compiled", dict(compile=True)),
    ("pim", "compiled", dict(compile=True, batch=8)),
    ("herbs", "compiled, CUDA graphs", dict(compile=True, batch=8, compile_options={"mode": "reduce-overhead"})),
]


def speed_variants(device: str, out: Path, log: Callable, deadline: float, plain_cache: dict,
                   save: Callable = lambda rows: None) -> list[dict]:
    """The candidate speed-ups, each beside the same plain step, until ``deadline`` (time.time())."""
    from .throughput import bench

    rows = []
    for method, what, kw in SPEED_VARIANTS:
        if time.time() > deadline:
            log(f"speed {method} ({what}): skipped, out of time")
            rows.append({"method": method, "variant": what, "ok": False, "error": "skipped: out of time"})
            continue
        try:
            r = bench(method, steps=10, warmup=3, device=device, plain=True, loader_workers=-1, plain_cache=plain_cache,
                      **kw)
            r.update(variant=what, ok=True)
            log(f"speed {method} ({what}): {r['train_img_per_s']:.1f} img/s, {r['step_ratio']:.2f}x the plain step, "
                f"first step {r['first_step_s']:.0f} s")
        except Exception as e:  # noqa: BLE001
            r = {"method": method, "variant": what, "ok": False, "error": f"{e.__class__.__name__}: {str(e)[:500]}"}
            log(f"speed {method} ({what}): FAILED {r['error']}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.append(r)
        save(rows)
    return rows


def table(functional_rows: dict[str, dict], bench_rows: list[dict]) -> str:
    """The one table: functional result and benchmark figures per method."""
    lines = []
    by_method = {r["method"]: r for r in bench_rows}
    for method, functional in functional_rows.items():
        figures = by_method.get(method, {})
        ok = "OK" if functional.get("ok") and figures.get("ok", True) else "FAILED"
        if figures.get("ok"):
            lines.append([method, ok, f"{figures['train_img_per_s']:.1f}", f"{figures['peak_mem_gib']:.2f}",
                          f"{figures['step_ratio']:.2f}x", f"{figures['plain']['train_img_per_s']:.1f}",
                          f"{figures['infer_img_per_s']:.1f}", f"{figures.get('loader_img_per_s', float('nan')):.0f}"])
        else:
            lines.append([method, ok] + ["-"] * 6)
    return markdown_table(["method", "check", "train img/s", "peak GiB", "step / plain step", "plain img/s",
                           "infer img/s", "loader img/s"], lines).rstrip("\n")


def main(out: str = "gpu-check", quick: bool = False, speed: bool = False, budget: float = 0.0) -> int:
    from ..data.synthetic import write_cub_layout
    from ..methods import list_methods

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    tiny = quick or not cuda
    device = "cuda" if cuda else "cpu"
    if not cuda:
        print("gpu-check: no CUDA device here; running the same path at tiny sizes on the CPU", flush=True)
    logfile = open(out_dir / "gpu-check.log", "w")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t_start:6.1f} s] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "timm": __import__("timm").__version__, "date": time.strftime("%Y-%m-%d"), "tiny": tiny,
           "commit": _git_commit()}
    log(f"gpu-check on {env['device']}, torch {env['torch']}, timm {env['timm']}, commit {env['commit']}")
    data_root = out_dir / "data"
    if not (data_root / "images.txt").is_file():
        write_cub_layout(data_root, classes=4, train_per_class=8, test_per_class=4, size=96 if tiny else 160, seed=0)
    results: dict[str, dict] = {}
    for method in list_methods():
        try:
            results[method] = {"ok": True, **functional(method, data_root, out_dir, device, tiny, log)}
        except Exception as e:  # noqa: BLE001 - report every method
            results[method] = {"ok": False, "error": f"{e.__class__.__name__}: {e}"}
            log(f"{method}: FAILED {results[method]['error']}")
            (out_dir / f"{method}.traceback.txt").write_text(traceback.format_exc())
        if cuda:
            torch.cuda.empty_cache()
    def save(**parts: Any) -> None:  # after every section, so a run cut short keeps what it measured
        summary = {"env": env, "functional": results, "seconds": round(time.perf_counter() - t_start, 1), **parts}
        (out_dir / "gpu-check.json").write_text(json.dumps(summary, indent=1, default=str))

    save()
    extra: dict[str, Any] = {}
    for name, fn in (("compile (dbgce, train.compile=true)",
                      lambda: compiled_training("dbgce", data_root, out_dir, device, tiny)),
                     ("process-group SIGTERM with loader workers",
                      lambda: process_group_sigterm(data_root, out_dir, device, tiny))):
        try:
            extra[name] = {"ok": True, **fn()}
            log(f"{name}: ok {extra[name]}")
        except Exception as e:  # noqa: BLE001
            extra[name] = {"ok": False, "error": f"{e.__class__.__name__}: {str(e)[:2000]}"}
            log(f"{name}: FAILED {extra[name]['error']}")
    save(checks=extra)
    plain_cache: dict = {}  # HERBS and PIM share their plain Swin-L step; the speed variants reuse them all
    bench_rows = benchmarks(device, tiny, out_dir, log, plain_cache, profile=speed and cuda)
    text = table(results, bench_rows)
    save(checks=extra, bench=bench_rows, table=text)
    speed_rows = []
    if speed and cuda:
        deadline = time.time() + (budget - (time.perf_counter() - t_start) if budget else 600)
        speed_rows = speed_variants(device, out_dir, log, deadline, plain_cache,
                                    lambda rows: save(checks=extra, bench=bench_rows, table=text, speed_variants=rows))
    failed = [m for m, r in results.items() if not r["ok"]] + [n for n, r in extra.items() if not r["ok"]] + \
        [r["method"] for r in bench_rows if not r.get("ok")]
    summary = {"env": env, "functional": results, "checks": extra, "bench": bench_rows, "table": text,
               "speed_variants": speed_rows,
               "official_h200_img_per_s": OFFICIAL_H200, "failed": failed,
               "seconds": round(time.perf_counter() - t_start, 1)}
    (out_dir / "gpu-check.json").write_text(json.dumps(summary, indent=1, default=str))
    print()
    print(text)
    for r in speed_rows:
        print(f"speed variant {r['method']} ({r['variant']}): " + (
            f"{r['train_img_per_s']:.1f} img/s, {r['step_ratio']:.2f}x the plain step, {r['peak_mem_gib']:.2f} GiB, "
            f"first step {r['first_step_s']:.0f} s" if r.get("ok") else r["error"]))
    for name, r in extra.items():
        print(f"{name}: {'OK' if r['ok'] else 'FAILED ' + r['error'][:300]}")
    print(f"gpu-check {'passed' if not failed else 'FAILED: ' + ', '.join(failed)} in {summary['seconds']:.0f} s on "
          f"{env['device']}; details in {out_dir / 'gpu-check.json'}")
    logfile.close()
    return 0 if not failed else 1


def _git_commit() -> Optional[str]:
    if os.environ.get("FGVC_COMMIT"):  # a copy of the tree without .git (a lent GPU machine)
        return os.environ["FGVC_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="folder for the table (JSON) and logs (default: gpu-check)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes even on a GPU")
    parser.add_argument("--speed", action="store_true", help="also measure the candidate speed-ups (compiled steps...)")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds for the whole check; speed variants that "
                        "would start after it are skipped (default: 0, no limit)")
    args = parser.parse_args()
    sys.exit(main(args.out, args.quick, args.speed, args.budget))
