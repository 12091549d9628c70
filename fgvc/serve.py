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
- **The same decoding as training** (:func:`fgvc.data.dataset.to_rgb`): an RGBA PNG over white, a 16-bit PNG
  scaled to 8 bits, so the service and ``fgvc predict`` give the same classes for the same file.

Why FastAPI (with uvicorn): the demo is one page and a few JSON routes around a model fgvc already loads,
and FastAPI does exactly that with few dependencies, typed multipart uploads and a test client. Gradio would
bring a large front-end and its own runtime for what is a file input and a list.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (UploadFile, Query),
# which are imported inside create_app, so they must be evaluated where the routes are defined.
import asyncio
import base64
import html
import io
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image, UnidentifiedImageError

from .data.dataset import to_rgb
from .errors import FgvcError
from .run import Run, load_run

MB = 10**6

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
async function send(file) {{
  document.getElementById('error').textContent = '';
  document.getElementById('status').textContent = 'classifying ' + file.name + ' ...';
  const form = new FormData(); form.append('image', file);
  const r = await fetch('api/predict?topk=5&overlay=true', {{ method: 'POST', body: form }});
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
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="fgvc-decode")
        self.queue: "queue.Queue[Optional[_Item]]" = queue.Queue()
        self.decoding = 0  # requests being decoded: the inference thread waits for them only
        self.lock = threading.Lock()
        self.batches = 0  # forward passes made, and images in them (for /api/info and the load benchmark)
        self.batched = 0
        self.worker = threading.Thread(target=self._work, name="fgvc-infer", daemon=True)
        self.worker.start()

    # -- decoding (thread pool) ------------------------------------------------------------------------

    def decode(self, data: bytes) -> Image.Image:
        """The upload as an RGB image, decoded as training decodes. Raises :class:`UploadError`."""
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
                im.load()
                return to_rgb(im)
        except Image.DecompressionBombError:
            raise UploadError(413, f"the image declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; "
                                   f"the limit is {self.max_pixels / 1e6:g} megapixels") from None
        except UnidentifiedImageError:
            raise UploadError(415, "the upload is not an image that PIL can read (JPEG, PNG, WebP, ...)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise UploadError(422, f"the image cannot be decoded (truncated or corrupt): {e}") from None

    def prepare(self, data: bytes) -> torch.Tensor:
        return self.transform(self.decode(data))

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


class UploadLimit:
    """ASGI middleware: a POST whose ``Content-Length`` passes the limit is refused before its body is read; one
    without it is counted as it streams and refused when it passes the limit (never read further)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _json(send, 413, f"the upload is {int(length) / MB:.1f} MB; the limit is "
                                          f"{self.max_bytes / MB:g} MB")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    from fastapi import HTTPException

                    raise HTTPException(413, f"the upload passed the limit of {self.max_bytes / MB:g} MB")
            return message

        return await self.app(scope, counted, send)


async def _json(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(run: Union[str, Path, Run], device: str = "auto", max_mb: float = 20.0, max_pixels: int = 40_000_000,
               max_batch: Optional[int] = None, max_wait_ms: float = 5.0, threads: Optional[int] = None):
    """The FastAPI application serving ``run`` (a run folder, checkpoint or loaded :class:`Run`); its
    :class:`ModelService` is ``app.state.service``."""
    try:
        from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse
    except ImportError:
        raise FgvcError("fgvc serve needs FastAPI, uvicorn and python-multipart: pip install 'fgvc[serve]'") from None
    run = run if isinstance(run, Run) else load_run(run, device)
    service = ModelService(run, int(max_mb * MB), max_pixels, max_batch, max_wait_ms, threads)
    app = FastAPI(title=f"fgvc {run.method}", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    app.add_middleware(UploadLimit, max_bytes=service.max_bytes)
    title = f"{run.method} on {run.cfg.model.backbone}"
    subtitle = (f"{len(run.class_names)} classes ({run.labels.get('dataset', '')}), checkpoint {run.checkpoint.name} "
                f"(step {run.step}); JSON API: POST /api/predict, GET /api/info, GET /api/docs")

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, e: UploadError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(404)
    async def not_found(request: Request, e):
        return JSONResponse({"error": f"no route {request.url.path} (GET /api/docs lists them)"}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()]
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        return JSONResponse({"error": f"internal error: {e.__class__.__name__}: {e}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle))

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"method": run.method, "backbone": run.cfg.model.backbone, "classes": run.class_names,
                "checkpoint": str(run.checkpoint), "step": run.step, "preprocessing": run.preprocess.describe(),
                "serving": {"max_batch": service.max_batch, "max_wait_ms": 1000 * service.max_wait,
                            "threads": service.threads, "max_upload_mb": service.max_bytes / MB,
                            "max_megapixels": service.max_pixels / 1e6, "forward_passes": service.batches,
                            "images": service.batched}}

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
            return JSONResponse({"error": f"{image.filename}: {e}"}, status_code=e.status)

    return app


def serve(run: Union[str, Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_mb: float = 20.0, max_pixels: int = 40_000_000, max_batch: Optional[int] = None,
          max_wait_ms: float = 5.0, threads: Optional[int] = None) -> None:
    """Serves a run until interrupted (Ctrl-C)."""
    try:
        import uvicorn
    except ImportError:
        raise FgvcError("fgvc serve needs FastAPI, uvicorn and python-multipart: pip install 'fgvc[serve]'") from None
    app = create_app(run, device, max_mb, max_pixels, max_batch, max_wait_ms, threads)
    s = app.state.service
    print(f"serving {run} on http://{host}:{port}/ (batches of up to {s.max_batch}, waiting {1000 * s.max_wait:g} ms; "
          f"{s.threads} threads; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve", "ModelService", "UploadError", "UploadLimit"]
