"""``fgvc bench-index``: the dataset index at iNaturalist scale, measured.

For each size it writes an iNaturalist-2021-layout dataset (``train.json`` and ``val.json`` with the official
fields; no image files, read with ``check_files=false``), then, each in a fresh process:

- **build**: ``open_dataset("inat", ...)``: seconds and the process's peak resident memory (and the memory
  before reading, the interpreter with torch, for reference);
- **fingerprint**: ``DatasetIndex.fingerprint()`` seconds;
- **workers**: the private memory (USS: ``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``) of each
  DataLoader worker after an epoch of index lookups (every record's path, label and banner crop, as
  ``ImageDataset`` reads them before decoding), for each worker count; with ``--layout objects`` the same with
  the records as a list of Python objects, the layout fgvc had before (for the comparison).

    fgvc bench-index --records 1000 300000 2686843 --workers 8 16 --out runs/bench-index
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..report.tables import markdown_table

INAT_2021 = 2_686_843
CLASSES = 10_000
KINGDOMS = ["Animalia", "Plantae", "Fungi", "Protozoa", "Chromista", "Bacteria"]


def generate_inat(root: Path, records: int, classes: int = CLASSES, val: Optional[int] = None, seed: int = 0) -> Path:
    """Writes ``root/train.json`` (``records`` images) and ``root/val.json`` in the iNaturalist 2021 format, with
    the official image fields and a full taxonomy per category; returns ``root``. No image file is written."""
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    classes = max(1, min(classes, records))
    val = val if val is not None else max(1, min(100_000, records // 27))
    cats = []
    for c in range(classes):
        genus = f"Genus{c // 4:05d}"
        cats.append({"id": c, "name": f"{genus} species{c:05d}", "common_name": f"common {c}",
                     "supercategory": KINGDOMS[c % len(KINGDOMS)], "kingdom": KINGDOMS[c % len(KINGDOMS)],
                     "phylum": f"Phylum{c % 13:02d}", "class": f"Class{c % 51:03d}", "order": f"Order{c % 273:03d}",
                     "family": f"Family{c // 9:04d}", "genus": genus, "specific_epithet": f"species{c:05d}",
                     "image_dir_name": f"{c:05d}_{KINGDOMS[c % len(KINGDOMS)]}_{genus}_species{c:05d}"})
    for name, n, first in (("train.json", records, 0), ("val.json", val, records)):
        with open(root / name, "w") as fh:
            fh.write('{"info": {"year": 2021, "version": "fgvc bench-index"}, "images": [')
            for i in range(n):
                c = (i * 7919) % classes if i >= classes else i  # every class has a training image
                cat = cats[c]
                image = {"id": first + i, "width": 500, "height": 375 + (i % 125), "license": 1 + i % 6,
                         "file_name": f"{name[:-5]}/{cat['image_dir_name']}/{rng.getrandbits(128):032x}.jpg",
                         "rights_holder": f"user{i % 99991}", "date": f"2019-{1 + i % 12:02d}-{1 + i % 28:02d} 10:15:00+00:00",
                         "latitude": round(40 + (i % 1000) / 100, 4), "longitude": round(-70 - (i % 977) / 100, 4),
                         "location_uncertainty": i % 500}
                fh.write(("," if i else "") + json.dumps(image))
            fh.write('], "categories": ' + json.dumps(cats) + ', "annotations": [')
            for i in range(n):
                c = (i * 7919) % classes if i >= classes else i
                fh.write(("," if i else "") + json.dumps({"id": first + i, "image_id": first + i, "category_id": c}))
            fh.write('], "licenses": [{"id": 1, "name": "CC BY"}]}')
    return root


# ---------------------------------------------------------------------------------------------------
# What each measurement runs, in a process of its own (`python -m fgvc.bench.index MODE ...`)


def _rss_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def private_kib(pid: str = "self") -> int:
    """The private memory (USS) of a process, in KiB: Private_Clean + Private_Dirty."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def _measure_build(root: str) -> dict[str, Any]:
    import fgvc.data  # noqa: F401 - torch and the readers, imported before the clock starts
    from fgvc.data.readers import open_dataset

    before = _current_rss_kib()
    t0 = time.perf_counter()
    index = open_dataset("inat", root, check_files=False)
    build = time.perf_counter() - t0
    peak = _rss_kib()
    t1 = time.perf_counter()
    fp = index.fingerprint()
    return {"records": len(index.records), "classes": index.num_classes, "build_s": build,
            "peak_gib": peak / 2**20, "before_gib": before / 2**20, "fingerprint_s": time.perf_counter() - t1,
            "fingerprint": fp}


class _Lookups:
    """An epoch of index lookups (what ``ImageDataset`` reads of a record before decoding); an index past the end
    asks the worker for its private memory."""

    def __init__(self, records, objects: bool):
        self.records, self.objects = records, objects

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        import torch

        if i >= len(self.records):
            return torch.tensor([os.getpid(), private_kib()])
        if self.objects:  # a list of Record objects, as before
            r = self.records[i]
            path, label, crop = r.path, r.label, r.crop_bottom
        else:
            path, label, crop = self.records.path(i), self.records.label(i), self.records.crop(i)
        return torch.tensor([len(path), label + crop])


def _measure_workers(root: str, workers: int, layout: str) -> dict[str, Any]:
    import torch

    from fgvc.data.dataset import leave_signals_to_the_main_process
    from fgvc.data.readers import open_dataset

    index = open_dataset("inat", root, check_files=False)
    records = list(index.records) if layout == "objects" else index.records
    del index
    import gc

    gc.collect()
    n = len(records)
    batch = 256
    order = [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
    order += [[n + k] for k in range(workers)]  # the last batches, one per worker (given out in turn): the probes
    loader = torch.utils.data.DataLoader(_Lookups(records, layout == "objects"), batch_sampler=order,
                                         num_workers=workers, worker_init_fn=leave_signals_to_the_main_process,
                                         prefetch_factor=2)
    t0 = time.perf_counter()
    probes = {}
    seen = 0
    for b in loader:
        if len(order) - seen <= workers:
            pid, kib = (int(v) for v in b[0])
            probes[pid] = kib
        seen += 1
    per_worker = sorted(probes.values())
    return {"records": n, "workers": workers, "layout": layout, "epoch_s": time.perf_counter() - t0,
            "worker_private_mib": [round(v / 1024, 1) for v in per_worker],
            "total_private_mib": round(sum(per_worker) / 1024, 1),
            "mean_private_mib": round(sum(per_worker) / 1024 / max(len(per_worker), 1), 1),
            "main_private_mib": round(private_kib() / 1024, 1)}


def _run(mode: str, *args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "fgvc.bench.index", mode, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"bench-index {mode} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_index(sizes: list[int], workers: list[int], out: Path, layouts: tuple[str, ...] = ("columns",),
                classes: int = CLASSES, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measures every size (build, fingerprint, workers for each count and layout); appends each row to
    ``out/bench-index.jsonl`` and returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        root = out / f"inat-{n}"
        if not (root / "val.json").is_file():
            t0 = time.perf_counter()
            generate_inat(root, n, classes)
            log(f"wrote an iNaturalist-2021 layout of {n:,} training images in {time.perf_counter() - t0:.0f} s: {root}")
        row: dict[str, Any] = {"records": n, "build": _run("build", str(root)), "workers": []}
        b = row["build"]
        log(f"{n:,} records: index built in {b['build_s']:.1f} s, peak {b['peak_gib']:.2f} GiB "
            f"({b['before_gib']:.2f} before reading); fingerprint {b['fingerprint_s']:.1f} s")
        for layout in layouts:
            for w in workers:
                m = _run("workers", str(root), str(w), layout)
                row["workers"].append(m)
                log(f"  {w} workers ({layout}): {m['total_private_mib']:.0f} MiB private in all after an epoch of "
                    f"lookups ({m['mean_private_mib']:.0f} MiB each)")
        rows.append(row)
        with open(out / "bench-index.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The measurements as a Markdown table: one line per dataset size and worker count."""
    lines = []
    for r in rows:
        build = r["build"]
        for m in r["workers"] or [{}]:
            lines.append([f"{r['records']:,}", f"{build['build_s']:.1f}", f"{build['peak_gib']:.2f}",
                          f"{build['fingerprint_s']:.1f}", m.get("layout", "-"), m.get("workers", "-"),
                          f"{m['mean_private_mib']:.0f} ({m['total_private_mib']:.0f})" if m else "-"])
    return markdown_table(["records", "build s", "build peak GiB", "fingerprint s", "layout", "workers",
                           "private MiB per worker (all)"], lines)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "build":
        print(json.dumps(_measure_build(rest[0])))
    elif mode == "workers":
        print(json.dumps(_measure_workers(rest[0], int(rest[1]), rest[2])))
    else:
        raise SystemExit(f"unknown mode {mode}")
