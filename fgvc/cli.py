"""The ``fgvc`` command: parses arguments, calls the library, prints. Nothing is computed here.

    fgvc train RECIPE_OR_CONFIG [key=value ...]        fgvc eval RUN
    fgvc train --method M --dataset D --data-root DIR  fgvc predict RUN IMAGE_OR_FOLDER... [--topk 5]
    fgvc explain RUN IMAGE_OR_FOLDER... --out DIR      fgvc localize RUN
    fgvc export RUN model.onnx|model.pt2               fgvc report RUN
    fgvc serve RUN [--port 8000]                       fgvc bench METHOD [key=value ...] [--plain]
    fgvc compare DATA_DIR [--methods a,b] [--epochs N]  fgvc bench-data [SET ...]
    fgvc data synth|verify|list                        fgvc methods | fgvc demo | fgvc gpu-check

Settings are always ``key=value`` with the config's dotted keys (``train.lr=0.01``, ``method.slide_step=16``,
``data.options.level=family``). ``--out`` is always the folder a command writes into. A user error (bad
key, missing file, unreadable image) prints one line starting with ``error:`` and exits with status 1; a
run stopped by SIGTERM/SIGINT exits with 75 after saving.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import EXIT_PREEMPTED, FgvcError, Preempted


def _settings(items: Sequence[str], allowed: Optional[set[str]] = None, what: str = "") -> list[str]:
    """The ``key=value`` items; with ``allowed``, only keys under those sections."""
    out = []
    for item in items:
        if "=" not in item:
            raise FgvcError(f"unexpected argument '{item}': settings are key=value")
        if allowed is not None and item.split("=", 1)[0].split(".")[0] not in allowed:
            raise FgvcError(f"{what} takes {', '.join(sorted(k + '.KEY=VALUE' for k in allowed))} settings, "
                            f"not '{item}'")
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------
# train / eval / predict / explain / localize / export / report / serve


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train
    from .recipes import recipe_path, resolve_recipe

    configs = [resolve_recipe(x) for x in args.items if "=" not in x]  # merged in order: recipe, dataset file
    overrides = _settings([x for x in args.items if "=" in x])
    base: dict = {}
    for section, key, value in (("model", "method", args.method), ("model", "backbone", args.backbone),
                                ("data", "dataset", args.dataset), ("data", "root", args.data_root)):
        if value:
            base.setdefault(section, {})[key] = value
    if args.out:
        base["out"] = args.out
    if args.device:
        base["device"] = args.device
    if not configs and args.method and args.dataset and args.dataset != "synthetic":
        configs = [recipe_path(args.method, args.dataset)]
    if configs:
        print(f"recipe: {' + '.join(map(str, configs))}")
    elif not args.method:
        print("note: no recipe given; training the defaults (fgvc methods lists the recipes)")
    cfg = load_config(configs, overrides, base=base)
    result = train(cfg, resume=args.resume, allow_mismatch=args.allow_mismatch, progress=not args.quiet)
    if result.test is not None and args.json:
        print(json.dumps({k: v for k, v in result.test.items() if k != "per_class"}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .inference import evaluate_run

    report = evaluate_run(args.run, data_root=args.data_root, split=args.split, device=args.device,
                          batch_size=args.batch_size, progress=not args.quiet)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "per_class"}))
        return 0
    k = next(key for key in report if key.startswith("top") and key != "top1")
    print(f"{args.split}: top-1 {report['top1']:.2f}%, {k[:3]}-{k[3:]} {report[k]:.2f}%, mean per-class "
          f"{report['mean_class_acc']:.2f}% on {report['num_images']} images ({report['checkpoint']}, "
          f"step {report['step']})")
    for p in report["confused_pairs"][:5]:
        print(f"  confused: {p['true_name']} -> {p['pred_name']} ({p['count']} of {p['of']})")
    return 0


def _report_unreadable(unreadable) -> None:
    for item, why in unreadable:
        print(f"skipped: {why}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import Predictor, collect_images

    if args.topk < 1:
        raise FgvcError(f"--topk must be at least 1, got {args.topk}")
    files = collect_images(args.images)
    predictor = Predictor(args.run, device=args.device, batch_size=args.batch_size)
    results = predictor.predict(files, topk=args.topk, skip_unreadable=True)
    _report_unreadable(predictor.unreadable)
    if args.json:
        print(json.dumps([{"image": str(f), "top": r, **({} if r is not None else {"error": "unreadable"})}
                          for f, r in zip(files, results)], indent=1))
    else:
        for f, r in zip(files, results):
            if r is not None:
                print(f"{f}: " + ", ".join(f"{p['name']} {100 * p['prob']:.1f}%" for p in r))
    if predictor.unreadable:
        print(f"{len(files) - len(predictor.unreadable)} of {len(files)} images predicted; "
              f"{len(predictor.unreadable)} unreadable", file=sys.stderr)
    return 0 if len(predictor.unreadable) < len(files) else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from .inference import Predictor, collect_images

    files = collect_images(args.images)
    predictor = Predictor(args.run, device=args.device)
    paths = predictor.explain(files, args.out)
    _report_unreadable(predictor.unreadable)
    print(f"wrote {len(paths)} overlay(s) to {args.out}"
          + (f"; {len(predictor.unreadable)} unreadable image(s) skipped" if predictor.unreadable else ""))
    return 0 if paths else 1


def cmd_localize(args: argparse.Namespace) -> int:
    from .localization import localization_report

    r = localization_report(args.run, data_root=args.data_root, split=args.split, device=args.device,
                            limit=args.limit)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['method']} on {r['images']} {r['split']} images with object boxes ({r['checkpoint']})")
    for name, m in r["boxes"].items():
        parts = (f", parts inside {100 * m['parts_inside']:.1f}% (random {100 * m['random_parts_inside']:.1f}%)"
                 if "parts_inside" in m else "")
        print(f"  box '{name}': IoU {m['iou']:.3f} (random box of the same size {m['random_iou']:.3f}), object "
              f"covered {100 * m['object_covered']:.1f}% (random {100 * m['random_object_covered']:.1f}%){parts}; "
              f"box area {100 * m['box_area_fraction']:.1f}% of the image")
    for name, m in r["maps"].items():
        print(f"  map '{name}': pointing {100 * m['pointing']:.1f}%, mass in object {100 * m['mass_in_object']:.1f}% "
              f"(object area {100 * m['object_area_fraction']:.1f}% of the image)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    r = export_run(args.run, args.out)
    print(f"wrote {r.path} and {r.sidecar} (batch dimension dynamic; checked at batch 1 and 3 against the run's "
          f"model: max |difference| {r.max_abs_diff:.2e})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_html, write_overlays

    if args.overlays:
        from .run import load_run

        run = load_run(args.run, device=args.device)
        records = run.records("test", args.data_root)
        write_overlays(run.model, records, run.preprocess, run.class_names, run.folder / "report" / "explain",
                       run.device, args.overlays)
        folder = run.folder
    else:
        folder = Path(args.run)
        if folder.is_file():
            folder = folder.parent
        if not (folder / "config.yaml").is_file():
            raise FgvcError(f"{folder} is not a run folder (no config.yaml)")
    print(f"wrote {build_html(folder)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.run, host=args.host, port=args.port, device=args.device, max_mb=args.max_mb,
          max_pixels=int(args.max_megapixels * 1e6), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          threads=args.threads, token=args.token, body_timeout=args.body_timeout)
    return 0


# ---------------------------------------------------------------------------------------------------
# data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import write_cub_layout

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FgvcError(f"{out} exists and is not empty")
    t0 = time.perf_counter()
    write_cub_layout(out, classes=args.classes, train_per_class=args.per_class, test_per_class=args.test_per_class,
                     size=args.size, seed=args.seed, progress=True)
    n = args.classes * (args.per_class + args.test_per_class)
    rate = n / (time.perf_counter() - t0)
    print(f"wrote {n} images of {args.classes} classes in the CUB-200-2011 layout to {out} "
          f"({rate:.0f} images/s on one core, JPEG encoding included)")
    print(f"train on it: fgvc train smoke/baseline data.root={out}")
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from .config import parse_overrides
    from .data.verify import verify_dataset

    options = parse_overrides(_settings(args.options, {"data"}, "data verify")).get("data", {})
    unknown = set(options) - {"options"}
    if unknown:
        raise FgvcError(f"data verify takes data.options.KEY=VALUE settings (reader options), not data.{unknown.pop()}")
    report = verify_dataset(args.root, args.dataset, options.get("options", {}), decode=not args.no_images,
                            workers=args.workers, progress=True)
    print("\n".join(report.describe()))
    return 0 if report.ok else 3


def cmd_data_list(args: argparse.Namespace) -> int:
    from .data import list_datasets

    for name, desc in list_datasets().items():
        print(f"{name:16s} {desc}")
    print(f"{'synthetic':16s} the built-in synthetic birds (generated on first use; fgvc data synth writes them)")
    return 0


# ---------------------------------------------------------------------------------------------------
# bench / methods / demo / gpu-check


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.throughput import bench
    from .config import parse_overrides

    extra = parse_overrides(_settings(args.options, {"method", "model"}, "bench"))
    model = extra.get("model", {})
    if set(model) - {"backbone_args"}:
        raise FgvcError("bench takes method.KEY=VALUE and model.backbone_args.KEY=VALUE settings")
    out = Path(args.out) if args.out else None
    if args.profile and out is None:
        raise FgvcError("--profile writes its trace into --out: name the folder")
    r = bench(args.method, args.backbone, img_size=args.img_size, batch=args.batch, steps=args.steps,
              warmup=args.warmup, device=args.device, amp=args.amp, channels_last=args.channels_last,
              compile=args.compile, num_classes=args.classes, infer_batch=args.infer_batch,
              loader_workers=args.loader_workers, method_options=extra.get("method"),
              backbone_args=model.get("backbone_args"), plain=args.plain,
              profile=(out / "profile") if args.profile else None)
    if args.profile:
        print(f"profile: {out / 'profile'}", file=sys.stderr)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['method']} on {r['backbone']} at {r['img_size']}px, batch {r['batch']}, {r['precision']}, "
              f"{r['device']}, {r['date']}" + (", compiled" if r["compile"] else ""))
        print(f"  training:  {r['train_img_per_s']:.1f} images/s ({r['step_ms']:.1f} ms/step; first step "
              f"{r['first_step_s']:.1f} s{', compilation included' if r['compile'] else ''})")
        if "plain" in r:
            p = r["plain"]
            print(f"  plain {p['method']} step, same backbone at {p['img_size']}px: {p['train_img_per_s']:.1f} "
                  f"images/s; this method's step costs {r['step_ratio']:.2f}x")
        print(f"  inference: {r['infer_img_per_s']:.1f} images/s (batch {r['infer_batch']})")
        print(f"  peak memory: {r['peak_mem_gib']:.2f} GiB ({r['peak_mem_kind']})")
        if r["loader_workers"] >= 0:
            print(f"  data loader: {r['loader_img_per_s']:.1f} images/s with {r['loader_workers']} workers")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "bench.jsonl", "a") as fh:
            fh.write(json.dumps(r) + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    from .compare import Budget, Comparison, parse_weights, plan_runs, run_comparison, table
    from .compare.plan import slug

    if args.root and "=" in args.root:  # only key=value settings were given
        args.options.insert(0, args.root)
        args.root = None
    backbones = [b.strip() for b in (args.backbones or args.backbone).split(",") if b.strip()]
    weights = parse_weights(args.weights, backbones)
    runs, notes = plan_runs(args.methods, args.variant or [], backbones, args.img_size)
    for note in notes:
        print(f"note: {note}")
    title = args.title or f"{Path(args.root).name if args.root else args.dataset} with {', '.join(backbones)}"
    # one folder per dataset by default: the same command on another dataset starts its own comparison
    out = args.out or f"runs/compare-{slug(Path(args.root).resolve().name if args.root else args.dataset)}"
    c = Comparison(root=args.root, dataset=args.dataset, backbones=backbones, runs=runs, out=Path(out).resolve(),
                   budget=Budget(args.epochs, args.img_size, args.batch_size, args.classes), weights=weights,
                   modes=[m.strip() for m in args.finetune.split(",") if m.strip()], tune=args.tune,
                   val_fraction=args.val_fraction, storage=args.storage, seed=args.seed, device=args.device,
                   parallel=args.parallel, launcher=shlex.split(args.launcher or ""),
                   settings=_settings(args.options), title=title)
    summary = run_comparison(c, log=lambda m: print(m, flush=True))
    print(table(summary))
    return 0 if all(r.get("top1") is not None or r.get("refused") for r in summary["rows"]) else 1


def cmd_bench_data(args: argparse.Namespace) -> int:
    from .bench.realdata import main as bench_data

    summaries = bench_data(args.sets or ["cnn"], args.data, args.out, args.mode, args.epochs, args.parallel,
                           args.device, only=args.run, dataset=args.dataset, classes=args.classes)
    return 0 if all(r.get("top1") is not None for s in summaries for r in s["runs"]) else 1


def cmd_bench_index(args: argparse.Namespace) -> int:
    from .bench.index import bench_index, table

    layouts = ("columns", "objects") if args.compare_objects else ("columns",)
    rows = bench_index(args.records, args.workers, Path(args.out), layouts=layouts, classes=args.classes,
                       log=lambda m: print(m, flush=True))
    print(table(rows))
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from .bench.service import bench_serve, table

    rows = bench_serve(args.run, args.image, tuple(args.clients), args.seconds, args.sequential,
                       log=lambda m: print(m, flush=True))
    print(table(rows))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench-serve.json").write_text(json.dumps(rows, indent=1))
    return 0


def cmd_bench_backbones(args: argparse.Namespace) -> int:
    from .bench.backbones import FAMILIES, backbone_table, table

    families = FAMILIES
    if args.families:
        wanted = [f.strip() for f in args.families.split(",") if f.strip()]
        known = {f.name: f for f in FAMILIES} | {f.model: f for f in FAMILIES}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise FgvcError(f"unknown famil(ies) {unknown}; the families: {', '.join(f.name for f in FAMILIES)}")
        families = [known[w] for w in wanted]
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    rows = backbone_table(methods, families, log=lambda m: print(m, flush=True))
    print()
    print(table(rows))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench-backbones.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r["result"] != "failed" for r in rows) else 1


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import get_method, list_methods
    from .recipes import list_recipes

    recipes = list_recipes()
    for name in list_methods():
        cls = get_method(name)
        print(f"{name}")
        print(f"  paper:     {cls.paper}")
        print(f"  code:      {cls.code}")
        print(f"  backbones: {cls.backbones}")
        if name in recipes:
            print(f"  recipes:   {', '.join(f'{name}/{d}' for d in recipes[name])}")
    smoke = ", ".join("smoke/" + d for d in recipes.get("smoke", []))
    print(f"smoke recipes (tiny backbones, a minute on a CPU): {smoke}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train
    from .recipes import DEMO

    overrides = _settings(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_config(DEMO, overrides)
    if cfg.out is None:
        cfg.out = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    k = cfg.data.synthetic.classes
    print(f"fgvc demo: {cfg.model.method} on {cfg.model.backbone} (random init) learns {k} synthetic bird species "
          f"that differ only in small parts, on the {cfg.device} device")
    t0 = time.time()
    result = train(cfg, progress=not args.quiet)
    rep = result.test
    print()
    print(f"demo done in {time.time() - t0:.0f} s: test top-1 {rep['top1']:.1f}% on {rep['num_images']} images "
          f"(chance {100.0 / k:.1f}%), mean per-class {rep['mean_class_acc']:.1f}%")
    print(f"  report:   {result.run_dir / 'report' / 'index.html'}")
    print(f"  next:     fgvc predict {result.run_dir} <image or folder>   |   fgvc serve {result.run_dir}")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from .bench.gpu_check import main as gpu_check

    return gpu_check(out=args.out, quick=args.quick, speed=args.speed, budget=args.budget)


# ---------------------------------------------------------------------------------------------------
# Parser


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, unless its help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if action.default is None or action.default is False:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(prog="fgvc", formatter_class=_Help, description="Fine-grained visual "
                                     "classification: train, evaluate, predict, explain, export, serve and compare "
                                     "TransFG, RAMS-Trans, WS-DAN, DB+GCE, HERBS/PIM, CAL, PMG and a baseline.")
    parser.add_argument("--version", action="version", version=f"fgvc {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, description: str = "") -> argparse.ArgumentParser:
        return subcommands.add_parser(name, help=help, description=description or help, formatter_class=_Help)

    def device_option(command_parser: argparse.ArgumentParser) -> None:
        command_parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")

    train = command("train", "train a model (a recipe, or --method/--dataset)",
                    "Train a model. Arguments: a recipe name (transfg/cub; fgvc methods lists them) or a CONFIG.yaml "
                    "(several are merged in order: wsdan/finetune datasets/cars196), then key=value settings "
                    "(train.lr=0.01 data.root=/data/CUB_200_2011 method.slide_step=16).")
    train.add_argument("items", nargs="*", metavar="RECIPE | CONFIG.yaml | key=value")
    train.add_argument("--method", help="method name (fgvc methods); with --dataset, trains the recipe METHOD/DATASET; "
                       "default: the recipe's")
    train.add_argument("--dataset", help="dataset reader (fgvc data list); default: the recipe's")
    train.add_argument("--data-root", help="dataset folder (data.root); default: the recipe's")
    train.add_argument("--backbone", help="timm model name (model.backbone); default: the recipe's")
    train.add_argument("--out", help="run folder; default: runs/<name>-<time>")
    train.add_argument("--device", help="auto, cpu, cuda, cuda:N; default: the config's (auto)")
    train.add_argument("--resume", metavar="auto|PATH", help="continue a run: 'auto' picks the newest valid checkpoint "
                       "of --out (and starts fresh if there is none); or a run folder / checkpoint; default: a new run")
    train.add_argument("--allow-mismatch", action="store_true",
                       help="resume even if the world size, dataset or config differ")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print the test report as JSON at the end")
    train.set_defaults(fn=cmd_train)

    evaluate = command("eval", "evaluate a run folder or checkpoint on its test split")
    evaluate.add_argument("run", help="run folder or checkpoint")
    evaluate.add_argument("--data-root", help="the dataset's folder, if it moved; default: the run's")
    evaluate.add_argument("--split", default="test", choices=["test", "val"], help="which split")
    device_option(evaluate)
    evaluate.add_argument("--batch-size", type=int, help="evaluation batch; default: the run's data.eval_batch_size")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(fn=cmd_eval)

    predict = command("predict", "class names and probabilities for images (files or folders)",
                      "Predict the classes of images. Unreadable files are reported and skipped.")
    predict.add_argument("run", help="run folder or checkpoint")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--topk", type=int, default=5, help="classes per image")
    predict.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    predict.add_argument("--json", action="store_true", help="print JSON")
    device_option(predict)
    predict.set_defaults(fn=cmd_predict)

    explain = command("explain", "PNG overlays of what the method localizes")
    explain.add_argument("run", help="run folder or checkpoint")
    explain.add_argument("images", nargs="+", help="image files or folders")
    explain.add_argument("--out", required=True, help="folder for the PNG files")
    device_option(explain)
    explain.set_defaults(fn=cmd_explain)

    localize = command("localize", "compare what a run localizes with annotated object boxes and parts")
    localize.add_argument("run", help="run folder or checkpoint")
    localize.add_argument("--data-root", help="the dataset's folder, if it moved; default: the run's")
    localize.add_argument("--split", default="test", choices=["test", "val", "train"], help="which split")
    localize.add_argument("--limit", type=int, help="at most this many images; default: all")
    device_option(localize)
    localize.add_argument("--json", action="store_true", help="print JSON")
    localize.set_defaults(fn=cmd_localize)

    export = command("export", "export a run's inference rule: ONNX (.onnx) or torch.export (.pt2)",
                     "Export a run for deployment. The batch dimension is dynamic; a JSON sidecar beside the file "
                     "holds the preprocessing, the class names and the method.")
    export.add_argument("run", help="run folder or checkpoint")
    export.add_argument("out", help="output file: model.onnx or model.pt2")
    export.set_defaults(fn=cmd_export)

    report = command("report", "rebuild a run's report/index.html (curves, confusion matrix, overlays)")
    report.add_argument("run", help="run folder")
    report.add_argument("--overlays", type=int, default=0, help="also redraw this many test overlays (needs the "
                        "dataset)")
    report.add_argument("--data-root", help="the dataset's folder, if it moved; default: the run's")
    device_option(report)
    report.set_defaults(fn=cmd_report)

    serve = command("serve", "a web page (and JSON API) to try a run on your own images",
                    "Serve a run: open http://HOST:PORT/ and drop an image; programs POST to /api/predict.")
    serve.add_argument("run", help="run folder or checkpoint")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, which "
                       "needs --token)")
    serve.add_argument("--port", type=int, default=8000, help="port")
    device_option(serve)
    serve.add_argument("--max-mb", type=float, default=20.0, help="largest upload accepted, in MB (10^6 bytes)")
    serve.add_argument("--max-megapixels", type=float, default=40.0,
                       help="largest image accepted (width x height, from its header: decompression bombs are refused)")
    serve.add_argument("--max-batch", type=int, help="requests that arrive together go through the model as one batch "
                       "of at most this many (1: no batching); default: 32 on CUDA, 8 on the CPU")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch "
                       "with")
    serve.add_argument("--threads", type=int, help="torch threads of the inference thread and decoding threads; "
                       "default: the cores this process may use, at most 8")
    serve.add_argument("--token", help="a secret every request must send (Authorization: Bearer TOKEN; the page: "
                       "/?token=TOKEN); required when --host is not a loopback address; default: $FGVC_SERVE_TOKEN")
    serve.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a request body may pause before the request is answered 408 and closed")
    serve.set_defaults(fn=cmd_serve)

    data = command("data", "datasets: synth, verify, list")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    synth = data_commands.add_parser("synth", help="write the synthetic fine-grained dataset in the CUB-200-2011 "
                                     "layout", formatter_class=_Help)
    synth.add_argument("--out", required=True, help="folder to write (must be empty or new)")
    synth.add_argument("--classes", type=int, default=10, help="number of classes")
    synth.add_argument("--per-class", type=int, default=40, help="training images per class")
    synth.add_argument("--test-per-class", type=int, default=20, help="test images per class")
    synth.add_argument("--size", type=int, default=128, help="image size in pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.set_defaults(fn=cmd_data_synth)
    verify = data_commands.add_parser("verify", help="read a dataset, compare its counts with the official ones, "
                                      "decode every image", formatter_class=_Help)
    verify.add_argument("root", help="the dataset's folder")
    verify.add_argument("options", nargs="*", metavar="data.options.KEY=VALUE", help="reader options (level=family...)")
    verify.add_argument("--dataset", required=True, help="reader name (fgvc data list)")
    verify.add_argument("--no-images", action="store_true", help="skip decoding the images")
    verify.add_argument("--workers", type=int, default=8, help="decoding threads")
    verify.set_defaults(fn=cmd_data_verify)
    listing = data_commands.add_parser("list", help="the dataset readers", formatter_class=_Help)
    listing.set_defaults(fn=cmd_data_list)
    data.set_defaults(fn=lambda args: (data.print_help(), 2)[1])

    bench = command("bench", "training/inference images/s, peak memory and loader images/s of a method",
                    "Measure a method on random input with random weights. Backbone, resolution and batch default to "
                    "the method's paper recipe (its CUB recipe).")
    bench.add_argument("method", help="method name")
    bench.add_argument("options", nargs="*", metavar="key=value", help="method.KEY=VALUE or "
                       "model.backbone_args.KEY=VALUE")
    bench.add_argument("--backbone", help="timm model name; default: the recipe's")
    bench.add_argument("--img-size", type=int, help="input size; default: the recipe's")
    bench.add_argument("--batch", type=int, help="training batch; default: the recipe's")
    bench.add_argument("--steps", type=int, default=20, help="timed training steps")
    bench.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    device_option(bench)
    bench.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                       help="autocast (auto: bf16 on CUDA)")
    bench.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    bench.add_argument("--compile", action="store_true", help="torch.compile the step (compile time reported apart)")
    bench.add_argument("--plain", action="store_true", help="also measure the plain backbone step and report the ratio")
    bench.add_argument("--classes", type=int, default=200, help="number of classes")
    bench.add_argument("--infer-batch", type=int, help="inference batch; default: 64 on CUDA, the training batch on "
                       "CPU")
    bench.add_argument("--loader-workers", type=int, help="loader workers; default: min(16, cores); -1 skips the "
                       "loader")
    bench.add_argument("--profile", action="store_true", help="write a torch.profiler trace and op table into --out")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.add_argument("--out", help="folder: appends the figures to OUT/bench.jsonl (and profiles to OUT/profile); "
                       "default: none (print only)")
    bench.set_defaults(fn=cmd_bench)

    bench_data = command("bench-data", "the real-data benchmark: 17 Flowers and Cars-196 with ImageNet Lite0 and "
                         "ViT-Tiny (shared data), a preset of fgvc compare", "Compare the methods' finetune recipes "
                         "on the project's shared real data: one fgvc compare per backbone "
                         "(OUT/DATASET-BACKBONE/index.html, results.json, results.csv). A rerun skips finished runs.")
    bench_data.add_argument("sets", nargs="*", metavar="SET", help="cnn (baseline, dbgce, wsdan, cal, pmg, pim, herbs "
                            "on Lite0), vit (ViT-Tiny, TransFG, RAMS-Trans), ablations (ViT methods, one difference "
                            "at a time), lr (the official learning rates of WS-DAN, CAL, PMG, PIM, HERBS); default: "
                            "cnn")
    bench_data.add_argument("--dataset", default="flowers17", choices=["flowers17", "cars196"], help="which shared set")
    bench_data.add_argument("--run", action="append", help="only this run (repeatable; see fgvc/bench/realdata.py); "
                            "default: the SETs' runs")
    bench_data.add_argument("--data", help="folder with flowers17/, cars196/ and the weight files; default: "
                            "../shared/data")
    bench_data.add_argument("--mode", default="cpu", choices=["cpu", "gpu"], help="cpu: 160 px CNNs, 224 px ViTs, "
                            "short budgets (Cars-196: its first 30 classes); gpu: 448 px, every class, the dataset "
                            "file's budget")
    bench_data.add_argument("--epochs", type=int, help="epochs of every run; default: the mode's")
    bench_data.add_argument("--classes", type=int, help="only the first N classes; default: the mode's")
    bench_data.add_argument("--parallel", type=int, default=0, help="runs at once (0: one on a CPU, by memory on a "
                            "GPU)")
    bench_data.add_argument("--device", default="auto", help="auto, cpu, cuda")
    bench_data.add_argument("--out", default="runs/bench-data", help="folder for the comparisons")
    bench_data.set_defaults(fn=cmd_bench_data)

    compare = command("compare", "which method, backbone and fine-tuning is best on a dataset, at what cost: one page "
                      "of paired differences",
                      "Train every chosen method on one dataset, on one or several backbones, with full fine-tuning, "
                      "LoRA or a linear probe, under the same budget (each with its METHOD/finetune recipe, one fgvc "
                      "train each; with --tune N, each tuned the same way by Optuna on a validation split carved from "
                      "the training set, the best setting then trained on the whole training set and tested once). "
                      "Then write OUT/index.html, OUT/results.json and OUT/results.csv: the methods x backbones grid "
                      "of test accuracies with paired 95% intervals and whether each difference to plain fine-tuning "
                      "is within noise, accuracy against cost with its Pareto fronts, the trials, curves, per-class "
                      "differences, what each method fixes and breaks, the same test images explained by each. A "
                      "rerun trains nothing that finished and continues what was interrupted; several machines "
                      "sharing OUT (and --storage) share the work.")
    compare.add_argument("root", nargs="?", help="the dataset's folder (class folders, a CSV, or an official layout); "
                         "default: the dataset file's")
    compare.add_argument("options", nargs="*", metavar="key=value", help="settings for every run (train.seed=1 ...)")
    compare.add_argument("--dataset", default="auto", help="reader (folder, csv, cub, cars, ...: fgvc data list), "
                         "a dataset file (flowers17, cars196), or auto: told from the folder's files")
    compare.add_argument("--backbone", default="resnet50.tv_in1k", help="timm model name, the same for every method")
    compare.add_argument("--backbones", help="several timm models, comma-separated (one grid); default: --backbone")
    compare.add_argument("--weights", help="local weight files: FILE for the one backbone, or BACKBONE=FILE,...; "
                         "default: timm's pretrained weights (cached or downloaded)")
    compare.add_argument("--methods", help="comma-separated methods; default: every method that accepts a backbone")
    compare.add_argument("--variant", action="append", metavar="'NAME=METHOD key=value ...'",
                         help="an extra run: a method with settings of its own (repeatable); default: none")
    compare.add_argument("--finetune", default="full", help="fine-tuning modes, comma-separated: full, lora, linear "
                         "(each adds a row per method)")
    compare.add_argument("--tune", type=int, default=0, help="trials per row drawn by Optuna on a validation split "
                         "(0: each recipe as it is)")
    compare.add_argument("--val-fraction", type=float, default=0.2, help="the validation split the trials are judged "
                         "on, carved (seeded, stratified) from the training set")
    compare.add_argument("--storage", help="an Optuna storage shared by several machines (a journal file on a shared "
                         "file system, or an RDB URL); default: OUT/study.journal")
    compare.add_argument("--seed", type=int, default=0, help="seed of the samplers")
    compare.add_argument("--launcher", help="run each training with this launcher instead of python, e.g. 'torchrun "
                         "--standalone --nproc_per_node=8' (a trial on 8 GPUs; --standalone: a free port for each "
                         "group); default: one process")
    compare.add_argument("--epochs", type=int, help="epochs of every run (and trial); default: the recipes' (or "
                         "dataset file's)")
    compare.add_argument("--img-size", type=int, help="input size (the resize before the crop is 8/7 of it); default: "
                         "448")
    compare.add_argument("--batch-size", type=int, help="batch per process; default: the recipes' (32)")
    compare.add_argument("--classes", type=int, help="only the first N classes (a quick look); default: all")
    compare.add_argument("--parallel", type=int, default=0, help="runs at once (0: one on a CPU, by memory on a GPU)")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda")
    compare.add_argument("--title", help="the page's title; default: the dataset folder and the backbones")
    compare.add_argument("--out", help="folder for the runs, the study, the page and the results; default: "
                         "runs/compare-<the dataset folder's name> (a rerun of the same command continues there)")
    compare.set_defaults(fn=cmd_compare)

    bench_index = command("bench-index", "the dataset index at iNaturalist scale: build time and memory, loader "
                          "workers' memory", "Write iNaturalist-2021-layout datasets of the given sizes (annotation "
                          "files only) and measure, each in a fresh process: the index build (seconds, peak memory), "
                          "the fingerprint, and the private memory of each loader worker after an epoch of index "
                          "lookups.")
    bench_index.add_argument("--records", type=int, nargs="+", default=[1000, 300_000, 2_686_843],
                             help="training images of each generated dataset")
    bench_index.add_argument("--workers", type=int, nargs="+", default=[8, 16], help="loader worker counts")
    bench_index.add_argument("--classes", type=int, default=10_000, help="classes of the generated datasets")
    bench_index.add_argument("--compare-objects", action="store_true", help="also measure the workers with the "
                             "records as Python objects (the layout before columns)")
    bench_index.add_argument("--out", default="runs/bench-index", help="folder for the generated datasets and "
                             "bench-index.jsonl")
    bench_index.set_defaults(fn=cmd_bench_index)

    bench_serve = command("bench-serve", "the web service under load on 127.0.0.1: latency and throughput, batching "
                          "off and on", "Start fgvc serve RUN on a free local port (once without batching, once with) "
                          "and measure sequential latency, then throughput and p50/p95/p99 latency for each number of "
                          "concurrent clients, and GET /api/info's latency during the heaviest load.")
    bench_serve.add_argument("run", help="run folder or checkpoint")
    bench_serve.add_argument("--image", help="the image every request uploads; default: the run's first test image")
    bench_serve.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients to measure")
    bench_serve.add_argument("--seconds", type=float, default=15.0, help="seconds of load for each number of clients")
    bench_serve.add_argument("--sequential", type=int, default=40, help="requests of the sequential measurement")
    bench_serve.add_argument("--out", help="folder for bench-serve.json; default: none (print only)")
    bench_serve.set_defaults(fn=cmd_bench_serve)

    bench_backbones = command("bench-backbones", "which method runs on which timm family: build, a training step, "
                              "explain and export, or a one-line refusal (random weights, small inputs)",
                              "Check every method against one model of each of twenty-odd timm families (random "
                              "weights, small inputs): built, one training step, explain, and a torch.export program "
                              "equal to the model; a method that cannot use a backbone must refuse it in one line. "
                              "Prints the table of docs/methods.md; exits 1 if any pair failed.")
    bench_backbones.add_argument("--methods", help="comma-separated methods; default: every method")
    bench_backbones.add_argument("--families", help="comma-separated families or model names; default: all")
    bench_backbones.add_argument("--out", help="folder for bench-backbones.json; default: none (print only)")
    bench_backbones.set_defaults(fn=cmd_bench_backbones)

    methods = command("methods", "the methods, their papers, the backbones they accept and their recipes")
    methods.set_defaults(fn=cmd_methods)

    demo = command("demo", "train and evaluate on the built-in synthetic data (CPU, a few minutes)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="settings")
    demo.add_argument("--out", help="run folder; default: runs/demo-<time>")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(fn=cmd_demo)

    gpu_check = command("gpu-check", "prove every feature on this machine's GPU (tiny CPU run without one)",
                        "Trains, evaluates, predicts, explains, localizes, exports and resumes every method on its "
                        "recipe's backbone and resolution, then benchmarks the headline settings; prints one table. "
                        "Without CUDA, the same path at tiny sizes on the CPU.")
    gpu_check.add_argument("--out", default="gpu-check", help="folder for the table (JSON) and logs")
    gpu_check.add_argument("--quick", action="store_true", help="tiny sizes even on a GPU (a smoke test of the check)")
    gpu_check.add_argument("--speed", action="store_true", help="also measure candidate speed-ups (compiled steps, "
                           "...)")
    gpu_check.add_argument("--budget", type=float, default=0.0, help="seconds for the whole check; speed variants "
                           "that would start later are skipped (0: no limit)")
    gpu_check.set_defaults(fn=cmd_gpu_check)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value settings may come after options (`train CONFIG --quiet data.root=X`)
    target = next((a for a in ("items", "overrides", "options") if isinstance(getattr(args, a, None), list)), None)
    if extra:
        if target is None or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, target).extend(extra)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except FgvcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(str(e), file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fgvc methods | head -1`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
