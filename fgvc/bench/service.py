"""``fgvc bench-serve RUN``: the web service under load, on 127.0.0.1 only, bounded in time.

For each setting (batching off: ``--max-batch 1``; on: the service's default) it starts ``fgvc serve RUN`` in
a process of its own on a free local port, then measures from this process:

- **sequential**: one client, one request after another: the latency (mean, p50) and the throughput;
- **concurrent**: ``c`` clients (threads with keep-alive connections) sending requests for ``seconds`` each,
  for each ``c``: throughput, and p50/p95/p99 latency;
- **info under load**: during the largest concurrency, ``GET /api/info`` every 100 ms: its p50/p99/max latency.

Every request uploads the same image (``--image``, or the run's first test image). The clients share this
machine's cores with the server: what is measured is the whole machine, as a user on it would see it.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..report.tables import markdown_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.jpg\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class _Client:
    """One keep-alive connection to the server."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: Optional[bytes] = None, ctype: str = "") -> float:
        t0 = time.perf_counter()
        headers = {"Content-Type": ctype} if ctype else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            r = self.conn.getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            raise
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:200]!r}")
        return time.perf_counter() - t0


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def _load(port: int, body: bytes, ctype: str, clients: int, seconds: float, probe_info: bool) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client() -> None:
        c = _Client(port)
        while time.perf_counter() < stop:
            try:
                s = c.request("POST", "/api/predict?topk=5", body, ctype)
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(s)

    info: list[float] = []

    def prober() -> None:
        c = _Client(port)
        while time.perf_counter() < stop:
            info.append(c.request("GET", "/api/info"))
            time.sleep(0.1)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    if probe_info:
        threads.append(threading.Thread(target=prober))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    out = {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": elapsed,
           "img_per_s": len(latencies) / elapsed, **_percentiles(latencies or [float("nan")])}
    if probe_info and info:
        out["info"] = _percentiles(info)
    return out


def bench_serve(run: str, image: Optional[str] = None, clients: tuple[int, ...] = (1, 8, 32), seconds: float = 15.0,
                sequential: int = 40, settings: tuple[tuple[str, list[str]], ...] = (("batching off", ["--max-batch", "1"]),
                                                                                ("batching on", [])),
                extra: tuple[str, ...] = (), log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measures every setting (see the module docstring); returns one row per setting."""
    if image is None:
        from ..run import load_run

        image = load_run(run, device="cpu").records("test")[0].path
    body, ctype = _body(Path(image).read_bytes())
    rows = []
    for name, flags in settings:
        port = _free_port()
        cmd = [sys.executable, "-m", "fgvc", "serve", str(run), "--port", str(port), "--device", "cpu", *flags, *extra]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while True:
                try:
                    _Client(port).request("GET", "/api/info")
                    break
                except (OSError, http.client.HTTPException):
                    if time.time() > deadline or server.poll() is not None:
                        raise RuntimeError(f"the server did not start: {server.stdout.read() if server.poll() else ''}")
                    time.sleep(0.2)
            c = _Client(port)
            for _ in range(3):  # warm-up
                c.request("POST", "/api/predict", body, ctype)
            seq = [c.request("POST", "/api/predict?topk=5", body, ctype) for _ in range(sequential)]
            row: dict[str, Any] = {"setting": name, "flags": flags, "sequential": {
                "requests": sequential, "img_per_s": sequential / sum(seq), **_percentiles(seq)}, "concurrent": []}
            log(f"{name}: sequential {row['sequential']['mean_ms']:.1f} ms a request "
                f"({row['sequential']['img_per_s']:.1f} images/s)")
            for n in clients:
                m = _load(port, body, ctype, n, seconds, probe_info=n == max(clients))
                row["concurrent"].append(m)
                extra_info = (f"; GET /api/info p50 {m['info']['p50_ms']:.1f} ms, p99 {m['info']['p99_ms']:.1f} ms"
                              if "info" in m else "")
                log(f"  {n} clients: {m['img_per_s']:.1f} images/s, p50 {m['p50_ms']:.0f} ms, p95 {m['p95_ms']:.0f} "
                    f"ms, p99 {m['p99_ms']:.0f} ms, {m['errors']} errors{extra_info}")
            row["server"] = serving_figures(port)
            rows.append(row)
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
    return rows


def serving_figures(port: int) -> dict[str, Any]:
    """``/api/info``'s serving figures: batch settings, forward passes and images served."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/api/info")
        return json.loads(c.getresponse().read())["serving"]
    finally:
        c.close()


def table(rows: list[dict[str, Any]]) -> str:
    """The measurements as a Markdown table: the sequential line, then one per number of clients, per setting."""
    lines = []
    for r in rows:
        seq = r["sequential"]
        lines.append([r["setting"], "1, sequential", f"{seq['img_per_s']:.1f}", f"{seq['p50_ms']:.1f}",
                      f"{seq['p95_ms']:.1f}", f"{seq['p99_ms']:.1f}", "-"])
        for m in r["concurrent"]:
            info = f"{m['info']['p50_ms']:.1f} / {m['info']['p99_ms']:.1f}" if "info" in m else "-"
            lines.append([r["setting"], m["clients"], f"{m['img_per_s']:.1f}", f"{m['p50_ms']:.0f}",
                          f"{m['p95_ms']:.0f}", f"{m['p99_ms']:.0f}", info])
    return markdown_table(["setting", "clients", "images/s", "p50 ms", "p95 ms", "p99 ms",
                           "GET /api/info during load (p50 / p99 ms)"], lines)


__all__ = ["bench_serve", "table"]
