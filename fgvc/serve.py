"""``fgvc serve RUN``: try a trained run in a web browser, or call it from a program, under load.

``GET /`` is a small page: drop or pick an image, see the top-5 classes with their probabilities and the
method's overlay (what it looked at). ``POST /api/predict`` (multipart field ``image``; query ``topk`` and
``overlay``) answers JSON: ``{"top": [{"name", "id", "index", "prob"}, ...], "overlay": "data:image/png..."}``.
``GET /api/info`` describes the model; ``GET /api/docs`` lists the routes (no script from the network: the
page is written here) and ``/api/openapi.json`` is the schema. Every error, whatever raised it (a bad upload,
a bad query, an unknown route, a fault of the model), is one JSON shape, ``{"error": message}``, with a 4xx or
5xx status, and the server keeps serving.

How it holds under load:

- **Off the event loop.** Decoding and preprocessing run in a thread pool; the model runs in one inference
  thread fed by a queue, so ``/api/info`` and new connections are answered while predictions run.
- **Batching.** The inference thread takes the requests that arrive together into one batch: up to
  ``max_batch`` images, waiting at most ``max_wait_ms`` after the first for those still being decoded (none
  being decoded: no wait, so a lone request pays nothing; ``max_batch=1``: no batching).
- **Threads.** The inference thread sets torch's thread count (``threads``; default: the cores this process
  may use, at most 8), so that the model does not fight the decoding threads for the cores.
- **Uploads.** ``Content-Length`` over the limit is refused (413) before the body is read, and a body without
  one is counted while it streams and refused as soon as it passes the limit. An image over ``max_pixels`` (a
  decompression bomb: 20000 x 20000 pixels in 99 bytes) is refused (413) from its header, before it is decoded.
- **Slow or stalled uploads.** A request body that stops arriving for ``body_timeout`` seconds is answered 408
  and its connection closed, so a client that stops mid-upload holds nothing.
- **Memory.** An image of more than 4 megapixels is decoded with at most one other at a time, a JPEG much larger
  than the model's input is decoded at a reduced size (Pillow's draft mode: its DCT scaling gives 1/2, 1/4 or 1/8
  of the pixels, never fewer than the resize needs), and once no large image is being decoded the freed memory is
  given back to the system (glibc's ``malloc_trim``; large blocks are mapped, not kept in the heap), so a burst of
  large images does not leave the service at its peak.
- **The same decoding as training** (:func:`fgvc.data.dataset.to_rgb`): an RGBA PNG over white, a 16-bit PNG
  scaled to 8 bits, so the service and ``fgvc predict`` give the same classes for the same file (a JPEG decoded
  in draft mode differs from a full decode by the resampling only).
- **Beyond this machine.** On an address other than loopback the service needs a token (``--token`` or
  ``FGVC_SERVE_TOKEN``): every request sends ``Authorization: Bearer TOKEN`` (the page reads it from its own
  address, ``/?token=TOKEN``). Every answer carries ``X-Content-Type-Options: nosniff``, ``Cache-Control:
  no-store``, a frame policy and ``Referrer-Policy: no-referrer``; the public routes name no file path.

Why FastAPI (with uvicorn): the demo is one page and a few JSON routes around a model fgvc already loads,
and FastAPI does exactly that with few dependencies, typed multipart uploads and a test client. Gradio would
bring a large front-end and its own runtime for what is a file input and a list.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (UploadFile, Query),
# which are imported inside create_app, so they must be evaluated where the routes are defined.
import asyncio
import base64
import contextlib
import ctypes
import hmac
import html
import io
import ipaddress
import json
import logging
import os
import queue
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image, UnidentifiedImageError

from .data.dataset import to_rgb
from .errors import FgvcError
from .run import Run, load_run

MB = 10**6
LARGE_PIXELS = 4_000_000  # an image this large is decoded under a bound, and its memory given back after
LARGE_AT_ONCE = 2  # large images decoded at the same time
TOKEN_ENV = "FGVC_SERVE_TOKEN"
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", b"frame-ancestors 'none'")]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fgvc: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
#drop {{ border: 2px dashed #888; padding: 2em; text-align: center; border-radius: 8px; }}
#drop.over {{ background: #eef; }}
#top5 li {{ margin: .2em 0; }} .bar {{ display: inline-block; height: .8em; background: #36c; margin-left: .5em; }}
#error {{ color: #b00; }} #overlay {{ max-width: 100%; margin-top: 1em; border: 1px solid #ddd; }}
</style></head><body>
<h1>fgvc: {title}</h1>
<p>{subtitle}</p>
<div id="drop">Drop an image here, or <input type="file" id="file" accept="image/*"></div>
<p id="status"></p><p id="error"></p>
<ol id="top5"></ol>
<img id="overlay" alt="" hidden>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('file');
const token = new URLSearchParams(location.search).get('token');
async function send(file) {{
  document.getElementById('error').textContent = '';
  document.getElementById('status').textContent = 'classifying ' + file.name + ' ...';
  const form = new FormData(); form.append('image', file);
  const r = await fetch('api/predict?topk=5&overlay=true', {{ method: 'POST', body: form,
                         headers: token ? {{ 'Authorization': 'Bearer ' + token }} : {{}} }});
  let j; try {{ j = await r.json(); }} catch (e) {{ j = {{ error: 'the server answered ' + r.status }}; }}
  const list = document.getElementById('top5'); list.innerHTML = '';
  const img = document.getElementById('overlay');
  if (!r.ok) {{ document.getElementById('error').textContent = j.error; img.hidden = true;
               document.getElementById('status').textContent = ''; return; }}
  for (const p of j.top) {{
    const li = document.createElement('li');
    const name = document.createElement('span'); name.className = 'name'; name.textContent = p.name;
    const prob = document.createElement('span'); prob.className = 'prob';
    prob.textContent = ' ' + (100 * p.prob).toFixed(1) + '%';
    const bar = document.createElement('span'); bar.className = 'bar'; bar.style.width = (200 * p.prob) + 'px';
    li.append(name, prob, bar); list.append(li);
  }}
  if (j.overlay) {{ img.src = j.overlay; img.hidden = false; }}
  document.getElementById('status').textContent = file.name;
}}
input.addEventListener('change', () => input.files.length && send(input.files[0]));
drop.addEventListener('dragover', e => {{ e.preventDefault(); drop.classList.add('over'); }});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => {{ e.preventDefault(); drop.classList.remove('over');
                                      if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]); }});
</script></body></html>
"""


class UploadError(Exception):
    """A request the service refuses: the HTTP status and the message for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _glibc() -> Optional[ctypes.CDLL]:
    """The C library where it is glibc (its allocator's knobs), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def map_large_blocks() -> None:
    """Makes the allocator map every block of 1 MiB or more (glibc's ``M_MMAP_THRESHOLD``, which otherwise rises to
    32 MiB after the first large free), so a decoded image's memory leaves the process when it is freed."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def return_memory() -> None:
    """Gives the allocator's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def default_threads() -> int:
    """The cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class _Item:
    __slots__ = ("x", "overlay", "future", "loop")

    def __init__(self, x, overlay, future, loop):
        self.x, self.overlay, self.future, self.loop = x, overlay, future, loop


class ModelService:
    """The model behind the server: uploads decoded in a thread pool, predictions batched in one inference thread.

    Args:
        run: The loaded run.
        max_bytes: The largest upload accepted.
        max_pixels: The largest image accepted (width x height).
        max_batch: Images per forward pass at most (1: no batching).
        max_wait_ms: How long the inference thread waits after a request for others to batch with it.
        threads: Torch's thread count in the inference thread (None: :func:`default_threads`).
    """

    def __init__(self, run: Run, max_bytes: int, max_pixels: int = 40_000_000, max_batch: Optional[int] = None,
                 max_wait_ms: float = 5.0, threads: Optional[int] = None):
        self.run = run
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.max_batch = max_batch or (32 if run.device.type == "cuda" else 8)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.threads = threads or default_threads()
        self.transform = run.preprocess.transform()
        self.decode_size = run.preprocess.resize  # the resize before the crop: no image needs more pixels
        self.large_slots = threading.BoundedSemaphore(LARGE_AT_ONCE)
        self.large_decoding = 0
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="fgvc-decode")
        self.queue: "queue.Queue[Optional[_Item]]" = queue.Queue()
        self.decoding = 0  # requests being decoded: the inference thread waits for them only
        self.lock = threading.Lock()
        self.batches = 0  # forward passes made, and images in them (for /api/info and the load benchmark)
        self.batched = 0
        self.worker = threading.Thread(target=self._work, name="fgvc-infer", daemon=True)
        self.worker.start()

    # -- decoding (thread pool) ------------------------------------------------------------------------

    def decode(self, data: bytes, then=to_rgb):
        """The upload decoded as training decodes (an RGB image), passed through ``then``. An image of more than
        :data:`LARGE_PIXELS` is decoded (and passed through ``then``) with at most :data:`LARGE_AT_ONCE` - 1 others;
        a JPEG at least twice the resize is decoded at a reduced size. Raises :class:`UploadError`."""
        if len(data) > self.max_bytes:
            raise UploadError(413, f"the upload is {len(data) / MB:.1f} MB; the limit is {self.max_bytes / MB:g} MB")
        if not data:
            raise UploadError(422, "the upload is empty")
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > self.max_pixels:
                    raise UploadError(413, f"the image is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); the limit "
                                           f"is {self.max_pixels / 1e6:g} megapixels")
                if im.format == "JPEG" and min(w, h) >= 2 * self.decode_size:
                    im.draft("RGB", (self.decode_size, self.decode_size))
                if w * h <= LARGE_PIXELS:
                    im.load()
                    return then(to_rgb(im))
                with self._large_decode():
                    im.load()
                    result = then(to_rgb(im))
                    im.close()  # its pixels go before the slot does (the last slot out gives memory back)
                    return result
        except Image.DecompressionBombError as e:  # beyond Pillow's own limit: it says how many pixels
            declared = re.search(r"\((\d+) pixels\)", str(e))
            size = f"declares {int(declared.group(1)) / 1e6:.0f} megapixels" if declared else "is too large"
            raise UploadError(413, f"the image {size}; the limit is {self.max_pixels / 1e6:g} megapixels") from None
        except UnidentifiedImageError:
            raise UploadError(415, "the upload is not an image that PIL can read (JPEG, PNG, WebP, ...)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise UploadError(422, f"the image cannot be decoded (truncated or corrupt): {e}") from None

    @contextlib.contextmanager
    def _large_decode(self):
        """A slot for decoding a large image; the last one out gives the freed memory back."""
        with self.large_slots:
            with self.lock:
                self.large_decoding += 1
            try:
                yield
            finally:
                with self.lock:
                    self.large_decoding -= 1
                    last = self.large_decoding == 0
                if last:
                    return_memory()

    def prepare(self, data: bytes) -> torch.Tensor:
        """The upload as the model's input (a large image freed before its slot is)."""
        return self.decode(data, then=self.transform)

    # -- inference (one thread) ------------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            first = self.queue.get()
            if first is None:
                return
            items, deadline = [first], time.monotonic() + self.max_wait
            while len(items) < self.max_batch:
                left = deadline - time.monotonic()
                if self.decoding == 0 and self.queue.empty():
                    break  # no other request on its way: waiting would only delay this one
                try:
                    item = self.queue.get(timeout=min(left, 0.001)) if left > 0 else self.queue.get_nowait()
                except queue.Empty:
                    if left > 0:
                        continue
                    break
                if item is None:
                    self.queue.put(None)
                    break
                items.append(item)
            for overlay in (False, True):
                group = [it for it in items if it.overlay is overlay]
                if group:
                    self._forward(group, overlay)

    @torch.no_grad()
    def _forward(self, group: list[_Item], overlay: bool) -> None:
        run = self.run
        try:
            x = torch.stack([it.x for it in group]).to(run.device)
            if overlay:
                expl = run.model.explain(x)
                probs = expl.logits.float().softmax(1).cpu()
            else:
                expl, probs = None, run.model(x).float().softmax(1).cpu()
            self.batches += 1
            self.batched += len(group)
            results = [(probs[i], (expl, i) if expl is not None else None) for i in range(len(group))]
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the thread goes on
            for it in group:
                it.loop.call_soon_threadsafe(_resolve, it.future, None, e)
            return
        for it, r in zip(group, results):
            it.loop.call_soon_threadsafe(_resolve, it.future, r, None)

    # -- one request -----------------------------------------------------------------------------------

    async def predict(self, data: bytes, topk: int = 5, overlay: bool = False) -> dict[str, Any]:
        """Top-``topk`` classes (and the overlay PNG as a data URL) of one upload. Raises :class:`UploadError`."""
        loop = asyncio.get_running_loop()
        with self.lock:
            self.decoding += 1
        try:
            x = await loop.run_in_executor(self.pool, self.prepare, data)
            future = loop.create_future()
            self.queue.put(_Item(x, overlay, future, loop))
        finally:
            with self.lock:
                self.decoding -= 1
        probs, explained = await future
        run = self.run
        p, idx = probs.topk(min(topk, probs.shape[0]))
        out: dict[str, Any] = {"top": [{"name": run.class_names[i], "id": run.class_ids[i], "index": i, "prob": v}
                                       for v, i in zip(p.tolist(), idx.tolist())]}
        if explained is not None:
            out["overlay"] = await loop.run_in_executor(self.pool, self._overlay, x, probs, *explained)
        return out

    def _overlay(self, x: torch.Tensor, probs: torch.Tensor, expl, i: int) -> str:
        from .explain import caption_for, render, to_image

        run = self.run
        figure = render(to_image(x, run.preprocess.mean, run.preprocess.std), expl, i,
                        caption_lines=caption_for(probs, run.class_names))
        buf = io.BytesIO()
        figure.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def close(self) -> None:
        self.queue.put(None)
        self.pool.shutdown(wait=False)


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BodyTimeout(Exception):
    """A request body that stopped arriving."""


class RequestGuard:
    """ASGI middleware in front of every route: the token (where one is set), the upload limit (a POST whose
    ``Content-Length`` passes it is refused before its body is read; one without it is counted as it streams and
    refused when it passes), the body timeout (:class:`BodyTimeout` when no part of a body arrives for
    ``body_timeout`` seconds), and the security headers on every answer, errors included."""

    def __init__(self, app, max_bytes: int, body_timeout: float = 30.0, token: Optional[str] = None):
        self.app, self.max_bytes, self.body_timeout, self.token = app, max_bytes, body_timeout, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in present]
            await send(message)

        headers = dict(scope.get("headers") or [])
        if self.token is not None and not self.authorized(headers, scope.get("query_string", b"")):
            return await json_error(send_with_headers, 401, "this service needs its token: send 'Authorization: "
                                    "Bearer TOKEN' (in a browser, open /?token=TOKEN)")
        if scope["method"] != "POST":
            return await self.app(scope, receive, send_with_headers)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await json_error(send_with_headers, 413, f"the upload is {int(length) / MB:.1f} MB; the limit is "
                                    f"{self.max_bytes / MB:g} MB")
        seen, complete = 0, False

        async def guarded_receive():
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.body_timeout)
            except asyncio.TimeoutError:
                raise BodyTimeout(f"no part of the request body arrived for {self.body_timeout:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    from fastapi import HTTPException

                    raise HTTPException(413, f"the upload passed the limit of {self.max_bytes / MB:g} MB")
            return message

        return await self.app(scope, guarded_receive, send_with_headers)

    def authorized(self, headers: dict[bytes, bytes], query: bytes) -> bool:
        """Whether the request carries the token (``Authorization: Bearer``, or ``?token=`` for the page)."""
        from urllib.parse import parse_qs

        sent = headers.get(b"authorization", b"").decode("latin-1")
        given = sent[7:] if sent.lower().startswith("bearer ") else ""
        given = given or (parse_qs(query.decode("latin-1")).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())


async def json_error(send, status: int, message: str) -> None:
    """Answers ``{"error": message}`` with ``status`` and closes the connection (from a middleware)."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validation_message(errors: list[dict[str, Any]]) -> str:
    """A request validation error in words: ``topk: must be at least 1``, the type names without Python's
    ``<class '...'>``."""
    parts = []
    for err in errors:
        where = [str(x) for x in err.get("loc", ()) if x not in ("body", "query")]
        message = re.sub(r"<class '(\w+)'>", r"\1", str(err.get("msg", ""))).removeprefix("Value error, ")
        if where == ["image"]:
            message = "the multipart field 'image' must be an image file" + (
                "" if err.get("type") == "missing" else f" ({message})")
            where = []
        parts.append(f"{'.'.join(where)}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def create_app(run: Union[str, Path, Run], device: str = "auto", max_mb: float = 20.0, max_pixels: int = 40_000_000,
               max_batch: Optional[int] = None, max_wait_ms: float = 5.0, threads: Optional[int] = None,
               token: Optional[str] = None, body_timeout: float = 30.0):
    """The FastAPI application serving ``run`` (a run folder, checkpoint or loaded :class:`Run`); its
    :class:`ModelService` is ``app.state.service``. With ``token``, every request must carry it."""
    try:
        from fastapi import FastAPI, File, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException  # FastAPI's is a subclass: this one catches both
    except ImportError:
        raise FgvcError("fgvc serve needs FastAPI, uvicorn and python-multipart: pip install 'fgvc[serve]'") from None
    quiet_libraries()
    map_large_blocks()
    run = run if isinstance(run, Run) else load_run(run, device)
    service = ModelService(run, int(max_mb * MB), max_pixels, max_batch, max_wait_ms, threads)
    app = FastAPI(title=f"fgvc {run.method}", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    app.add_middleware(RequestGuard, max_bytes=service.max_bytes, body_timeout=body_timeout, token=token)
    title = f"{run.method} on {run.cfg.model.backbone}"
    subtitle = (f"{len(run.class_names)} classes ({run.labels.get('dataset', '')}), checkpoint {run.checkpoint.name} "
                f"(step {run.step}); JSON API: POST /api/predict, GET /api/info, GET /api/docs")

    def error(status: int, message: str, close: bool = False) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError):
        return error(e.status, str(e))

    @app.exception_handler(BodyTimeout)
    async def body_timed_out(request: Request, e: BodyTimeout):
        return error(408, str(e), close=True)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if isinstance(e.__cause__, BodyTimeout):  # FastAPI turns a failure while reading the form into a 400
            return error(408, str(e.__cause__), close=True)
        if e.status_code == 404:
            path = request.url.path
            shown = path if len(path) <= 80 else path[:80] + f"... ({len(path)} characters)"
            return error(404, f"no route {shown} (GET /api/docs lists them)")
        if e.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path[:80]} (GET /api/docs lists the "
                              "routes and their methods)")
        return error(e.status_code, str(e.detail), close=e.status_code in (400, 413))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return error(422, validation_message(e.errors()))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        return error(500, f"internal error: {e.__class__.__name__}: {e}")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle))

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"method": run.method, "backbone": run.cfg.model.backbone, "classes": run.class_names,
                "checkpoint": run.checkpoint.name, "step": run.step, "preprocessing": run.preprocess.describe(),
                "serving": {"max_batch": service.max_batch, "max_wait_ms": 1000 * service.max_wait,
                            "threads": service.threads, "max_upload_mb": service.max_bytes / MB,
                            "max_megapixels": service.max_pixels / 1e6, "forward_passes": service.batches,
                            "images": service.batched, "token": token is not None}}

    @app.get("/api/docs", response_class=HTMLResponse)
    def docs() -> str:
        rows = []
        for path, methods in app.openapi()["paths"].items():
            for method, op in methods.items():
                params = ", ".join(f"{p['name']} ({p['in']})" for p in op.get("parameters", []))
                body = " multipart field 'image'" if "requestBody" in op else ""
                rows.append(f"<tr><td>{method.upper()}</td><td><code>{html.escape(path)}</code></td>"
                            f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(params)}{body}</td></tr>")
        return ("<!doctype html><html><head><meta charset='utf-8'><title>fgvc API</title><style>body{font-family:"
                "sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:2px 8px}table{border-collapse:collapse}"
                "</style></head><body><h1>fgvc API</h1><p>Every error answers <code>{\"error\": message}</code>. The "
                "schema: <a href='/api/openapi.json'>/api/openapi.json</a>.</p><table><tr><th>method</th><th>path"
                "</th><th>what</th><th>parameters</th></tr>" + "".join(rows) + "</table></body></html>")

    @app.post("/api/predict", summary="top-k classes of an uploaded image (and the method's overlay)")
    async def predict(image: UploadFile = File(...), topk: int = Query(5, ge=1, le=1000),
                      overlay: bool = Query(False)):
        data = await image.read()
        try:
            return await service.predict(data, topk=topk, overlay=overlay)
        except UploadError as e:
            return error(e.status, f"{(image.filename or 'the upload')[:80]}: {e}")

    return app


def quiet_libraries() -> None:
    """Keeps the service's log to what it says itself: python-multipart's parser notes and Pillow's
    decompression-bomb warning (the service applies its own pixel limit, from the header) stay out of it."""
    for name in ("multipart", "python_multipart", "multipart.multipart", "python_multipart.multipart"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def serve(run: Union[str, Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_mb: float = 20.0, max_pixels: int = 40_000_000, max_batch: Optional[int] = None,
          max_wait_ms: float = 5.0, threads: Optional[int] = None, token: Optional[str] = None,
          body_timeout: float = 30.0) -> None:
    """Serves a run until interrupted (Ctrl-C).

    Raises:
        FgvcError: An address beyond this machine without a token, before anything loads.
    """
    try:
        import uvicorn
    except ImportError:
        raise FgvcError("fgvc serve needs FastAPI, uvicorn and python-multipart: pip install 'fgvc[serve]'") from None
    token = token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and token is None:
        raise FgvcError(f"--host {host} serves beyond this machine: give it a token (--token TOKEN or {TOKEN_ENV}), "
                        "which every request must send")
    print(f"loading {run} on {device} ...", flush=True)
    app = create_app(run, device, max_mb, max_pixels, max_batch, max_wait_ms, threads, token, body_timeout)
    s = app.state.service
    if not is_loopback(host):
        print(f"warning: serving beyond this machine on {host}:{port}; every request must send the token "
              "(Authorization: Bearer TOKEN; the page: /?token=TOKEN)", flush=True)
    print(f"serving on http://{host}:{port}/ (batches of up to {s.max_batch}, waiting {1000 * s.max_wait:g} ms; "
          f"{s.threads} threads; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)


__all__ = ["create_app", "serve", "ModelService", "UploadError", "RequestGuard", "BodyTimeout", "is_loopback"]
