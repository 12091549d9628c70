"""The ``fgvc`` command: one small function per subcommand.

    fgvc train CONFIG.yaml [key=value ...]          fgvc eval RUN_DIR_OR_CHECKPOINT
    fgvc train --method M --dataset D --data-root DIR   fgvc predict RUN IMAGE_OR_FOLDER... [--topk 5]
    fgvc explain RUN IMAGE_OR_FOLDER... --out DIR     fgvc data synth --out DIR
    fgvc data verify ROOT --dataset NAME            fgvc bench METHOD [--backbone B ...]
    fgvc methods                                    fgvc demo

A user error (bad key, missing file, unreadable image) prints one line starting with ``error:`` and
exits with status 1; a run stopped by SIGTERM/SIGINT exits with 75 after saving.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .errors import FgvcError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"


def _recipe_for(method: str, dataset: str) -> Optional[Path]:
    for base in (Path.cwd() / "configs", REPO_CONFIGS):
        p = base / method / f"{dataset}.yaml"
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------------------------------------
# train / eval / predict / explain


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train

    config, overrides = None, []
    for item in args.items:
        if "=" in item:
            overrides.append(item)
        elif config is None and item.endswith((".yaml", ".yml")):
            config = item
        else:
            raise FgvcError(f"unexpected argument '{item}': expected a CONFIG.yaml and key=value overrides")
    base: dict = {}
    if args.method:
        base.setdefault("model", {})["method"] = args.method
    if args.backbone:
        base.setdefault("model", {})["backbone"] = args.backbone
    if args.dataset:
        base.setdefault("data", {})["dataset"] = args.dataset
    if args.data_root:
        base.setdefault("data", {})["root"] = args.data_root
    if args.out:
        base["out"] = args.out
    if args.device:
        base["device"] = args.device
    if config is None and args.method and args.dataset:
        recipe = _recipe_for(args.method, args.dataset)
        if recipe:
            print(f"recipe: {recipe}")
            config = str(recipe)
    cfg = load_config(config, overrides, base=base)
    if config is None and not args.method:
        print("note: no config given; training the defaults (see fgvc train --help)")
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


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import Predictor, collect_images

    files = collect_images(args.images)
    predictor = Predictor(args.run, device=args.device)
    results = predictor.predict(files, topk=args.topk)
    if args.json:
        print(json.dumps([{"image": str(f), "top": r} for f, r in zip(files, results)], indent=1))
        return 0
    for f, r in zip(files, results):
        best = ", ".join(f"{p['name']} {100 * p['prob']:.1f}%" for p in r)
        print(f"{f}: {best}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .inference import Predictor, collect_images

    files = collect_images(args.images)
    paths = Predictor(args.run, device=args.device).explain(files, args.out)
    print(f"wrote {len(paths)} overlay(s) to {args.out}")
    return 0


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
    import torch

    from .inference import load_run

    run = load_run(args.run, device="cpu")
    size = run.cfg.data.img_size
    example = torch.randn(args.batch, 3, size, size)
    program = torch.export.export(run.model, (example,))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out))
    meta = {"checkpoint": str(run.checkpoint), "step": run.step, "method": run.cfg.model.method,
            "backbone": run.cfg.model.backbone, "input": [args.batch, 3, size, size], "mean": list(run.mean_std[0]),
            "std": list(run.mean_std[1]), "class_names": run.class_names,
            "output": "logits (softmax gives the method's prediction)"}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {out} (torch.export program; load with torch.export.load) and {out.with_suffix('.json')}")
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
    print(f"train on it: fgvc train configs/smoke/baseline.yaml data.root={out}")
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from collections import Counter

    from .config import parse_overrides
    from .data import check_images, open_dataset

    options = parse_overrides(args.option or [])
    name = "cub" if args.dataset == "synthetic" else args.dataset
    index = open_dataset(name, args.root, **options)
    print(f"{index.name} at {index.root}: {index.num_classes} classes"
          + (f" (expected {index.expected_classes})" if index.expected_classes else ""))
    ok = True
    counts = Counter(r.split for r in index.records)
    for split, n in sorted(counts.items()):
        exp = index.expected.get(split)
        mark = "" if exp is None else (" ok" if exp == n else f" (expected {exp})")
        ok &= exp is None or exp == n
        print(f"  {split}: {n} images{mark}")
    if index.expected_classes and index.expected_classes != index.num_classes:
        ok = False
    per_class = Counter(r.label for r in index.records)
    lo, hi = min(per_class.values()), max(per_class.values())
    print(f"  images per class: {lo}..{hi}; classes without images: {index.num_classes - len(per_class)}")
    if index.records[0].box is not None:
        print(f"  boxes: {sum(r.box is not None for r in index.records)}; parts: "
              f"{sum(r.parts is not None for r in index.records)} ({', '.join(index.part_names) or '-'})")
    for note in index.notes:
        print(f"  note: {note}")
    if not args.no_images:
        from tqdm import tqdm

        with tqdm(total=len(index.records), desc="decoding", unit="img", leave=False) as bar:
            bad = check_images(index.records, workers=args.workers, progress=bar.update)
        print(f"  unreadable images: {len(bad)}")
        for i, path, why in bad:
            print(f"    {path} (index {i}): {why}")
        ok &= not bad
    print("verdict: " + ("as expected" if ok else "differs from the official counts or has unreadable images"))
    return 0 if ok else 3


def cmd_data_list(args: argparse.Namespace) -> int:
    from .data import list_datasets

    for name, desc in list_datasets().items():
        print(f"{name:16s} {desc}")
    print(f"{'synthetic':16s} the built-in synthetic birds (generated on first use; fgvc data synth writes them)")
    return 0


# ---------------------------------------------------------------------------------------------------
# bench / methods / demo


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench
    from .config import parse_overrides

    extra = parse_overrides(args.options or [])
    unknown = set(extra) - {"method", "backbone_args"}
    if unknown:
        raise FgvcError(f"bench takes method.KEY=VALUE and backbone_args.KEY=VALUE overrides, not {sorted(unknown)}")
    r = bench(args.method, args.backbone, img_size=args.img_size, batch=args.batch, steps=args.steps,
              warmup=args.warmup, device=args.device, amp=args.amp, channels_last=args.channels_last,
              compile=args.compile, num_classes=args.classes, infer_batch=args.infer_batch,
              loader_workers=args.loader_workers, method_options=extra.get("method"),
              backbone_args=extra.get("backbone_args"))
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['method']} on {r['backbone']} at {r['img_size']}px, batch {r['batch']}, {r['precision']}, "
              f"{r['device']}, {r['date']}")
        print(f"  training:  {r['train_img_per_s']:.1f} images/s")
        print(f"  inference: {r['infer_img_per_s']:.1f} images/s (batch {r['infer_batch']})")
        print(f"  peak memory: {r['peak_mem_gib']:.2f} GiB ({r['peak_mem_kind']})")
        if r["loader_workers"] >= 0:
            print(f"  data loader: {r['loader_img_per_s']:.1f} images/s with {r['loader_workers']} workers")
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(r) + "\n")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .registry import get_method, list_methods

    for name in list_methods():
        cls = get_method(name)
        recipes = sorted(p.stem for p in (REPO_CONFIGS / name).glob("[!_]*.yaml")) if (REPO_CONFIGS / name).is_dir() else []
        print(f"{name}")
        print(f"  paper:     {cls.paper}")
        print(f"  code:      {cls.code}")
        print(f"  backbones: {cls.backbones}")
        if recipes:
            print(f"  recipes:   {', '.join(recipes)} (configs/{name}/)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train

    overrides = list(args.overrides or [])
    if args.out:
        overrides.append(f"out={args.out}")
    cfg = load_config(DEMO_CONFIG, overrides)
    if cfg.out is None:
        cfg.out = f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    k = cfg.data.synthetic.classes
    print(f"fgvc demo: {cfg.model.method} on {cfg.model.backbone} (random init) learns {k} synthetic bird species "
          f"that differ only in small parts, on the {cfg.device} device")
    t0 = time.time()
    result = train(cfg, progress=not args.quiet)
    rep = result.test
    chance = 100.0 / k
    print()
    print(f"demo done in {time.time() - t0:.0f} s: test top-1 {rep['top1']:.1f}% on {rep['num_images']} images "
          f"(chance {chance:.1f}%), mean per-class {rep['mean_class_acc']:.1f}%")
    print(f"  report:   {result.run_dir / 'report' / 'test.md'}")
    print(f"  overlays: {result.run_dir / 'report' / 'explain'}/")
    print(f"  next:     fgvc predict {result.run_dir} <image or folder>   |   fgvc explain {result.run_dir} <images> "
          f"--out DIR")
    return 0


# ---------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="fgvc", description="Fine-grained visual classification: train, evaluate, "
                                "predict and explain TransFG, RAMS-Trans, WS-DAN, DB+GCE, HERBS/PIM and a baseline.")
    p.add_argument("--version", action="version", version=f"fgvc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (a recipe, or --method/--dataset)",
                       description="Train a model. Arguments: an optional CONFIG.yaml, then key=value overrides "
                       "(train.lr=0.01 data.root=/data/CUB_200_2011 method.slide_step=16).")
    t.add_argument("items", nargs="*", metavar="CONFIG.yaml | key=value")
    t.add_argument("--method", help="method name (fgvc methods); with --dataset, uses configs/METHOD/DATASET.yaml")
    t.add_argument("--dataset", help="dataset reader (fgvc data list)")
    t.add_argument("--data-root", help="dataset folder")
    t.add_argument("--backbone", help="timm model name")
    t.add_argument("--out", help="run folder (default runs/<name>-<time>)")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--resume", metavar="auto|PATH", help="continue a run: 'auto' picks the newest valid checkpoint "
                   "of --out (and starts fresh if there is none); or a run folder / checkpoint")
    t.add_argument("--allow-mismatch", action="store_true",
                   help="resume even if the world size, dataset or config differ")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--json", action="store_true", help="print the test report as JSON at the end")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run folder or checkpoint on its test split")
    e.add_argument("run", help="run folder or checkpoint")
    e.add_argument("--data-root", help="the dataset's folder, if it moved")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--device", default="auto")
    e.add_argument("--batch-size", type=int)
    e.add_argument("--json", action="store_true")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="class names and probabilities for images")
    pr.add_argument("run", help="run folder or checkpoint")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(fn=cmd_predict)

    ex = sub.add_parser("explain", help="PNG overlays of what the method localizes")
    ex.add_argument("run", help="run folder or checkpoint")
    ex.add_argument("images", nargs="+", help="image files or folders")
    ex.add_argument("--out", required=True, help="folder for the PNG files")
    ex.add_argument("--device", default="auto")
    ex.set_defaults(fn=cmd_explain)

    lo = sub.add_parser("localize", help="compare what a run localizes with annotated object boxes and parts")
    lo.add_argument("run", help="run folder or checkpoint")
    lo.add_argument("--data-root", help="the dataset's folder, if it moved")
    lo.add_argument("--split", default="test", choices=["test", "val", "train"])
    lo.add_argument("--limit", type=int, help="at most this many images")
    lo.add_argument("--device", default="auto")
    lo.add_argument("--json", action="store_true")
    lo.set_defaults(fn=cmd_localize)

    xp = sub.add_parser("export", help="export a run's inference rule with torch.export (.pt2)")
    xp.add_argument("run", help="run folder or checkpoint")
    xp.add_argument("out", help="output file, e.g. model.pt2 (a .json with class names and normalization is written beside it)")
    xp.add_argument("--batch", type=int, default=1, help="example batch size traced")
    xp.set_defaults(fn=cmd_export)

    d = sub.add_parser("data", help="datasets: synth, verify, list")
    dsub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    s = dsub.add_parser("synth", help="write the synthetic fine-grained dataset in the CUB-200-2011 layout")
    s.add_argument("--out", required=True)
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--per-class", type=int, default=40, help="training images per class")
    s.add_argument("--test-per-class", type=int, default=20)
    s.add_argument("--size", type=int, default=128, help="image size in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_data_synth)
    v = dsub.add_parser("verify", help="read a dataset, compare its counts with the official ones, decode every image")
    v.add_argument("root")
    v.add_argument("--dataset", required=True, help="reader name (fgvc data list)")
    v.add_argument("--option", action="append", metavar="KEY=VALUE", help="reader option (e.g. level=family)")
    v.add_argument("--no-images", action="store_true", help="skip decoding the images")
    v.add_argument("--workers", type=int, default=8)
    v.set_defaults(fn=cmd_data_verify)
    ls = dsub.add_parser("list", help="the dataset readers")
    ls.set_defaults(fn=cmd_data_list)
    d.set_defaults(fn=lambda a: (d.print_help(), 2)[1])

    b = sub.add_parser("bench", help="training/inference images/s, peak memory and loader images/s of a method")
    b.add_argument("method")
    b.add_argument("options", nargs="*", metavar="method.KEY=VALUE", help="method or backbone_args overrides")
    b.add_argument("--backbone", default="resnet50")
    b.add_argument("--img-size", type=int, default=224)
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--device", default="auto")
    b.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    b.add_argument("--channels-last", action="store_true")
    b.add_argument("--compile", action="store_true")
    b.add_argument("--classes", type=int, default=200)
    b.add_argument("--infer-batch", type=int)
    b.add_argument("--loader-workers", type=int, help="loader workers (default min(16, cores); -1 skips)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--out", help="append the figures as a JSON line to this file")
    b.set_defaults(fn=cmd_bench)

    m = sub.add_parser("methods", help="the methods, their papers and the backbones they accept")
    m.set_defaults(fn=cmd_methods)

    dm = sub.add_parser("demo", help="train and evaluate on the built-in synthetic data (CPU, a few minutes)")
    dm.add_argument("overrides", nargs="*", metavar="key=value")
    dm.add_argument("--out", help="run folder (default runs/demo-<time>)")
    dm.add_argument("--quiet", action="store_true")
    dm.set_defaults(fn=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`train CONFIG --quiet data.root=X`)
    target = next((a for a in ("items", "overrides", "options") if isinstance(getattr(args, a, None), list)), None)
    if extra:
        if target is None or any("=" not in x or x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, target).extend(extra)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    from .engine.trainer import EXIT_PREEMPTED, Preempted

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


if __name__ == "__main__":
    sys.exit(main())
