"""``fgvc serve RUN``: try a trained run in a web browser, or call it from a program.

``GET /`` is a small page: drop or pick an image, see the top-5 classes with their probabilities and the
method's overlay (what it looked at). ``POST /api/predict`` (multipart field ``image``; query ``topk`` and
``overlay``) answers JSON: ``{"top": [{"name", "id", "index", "prob"}, ...], "overlay": "data:image/png..."}``.
``GET /api/info`` describes the model. A bad upload (not an image, truncated, too large) gets a 4xx JSON
answer ``{"error": ...}`` and the server keeps serving.

Why FastAPI (with uvicorn): the demo is one page and two JSON routes around a model fgvc already loads,
and FastAPI does exactly that with few dependencies, typed multipart uploads and a test client, and it
serves no assets from the network (the page is written here, so it works offline). Gradio would bring a
large front-end and its own runtime for what is a file input and a list.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations (UploadFile, Query),
# which are imported inside create_app, so they must be evaluated where the routes are defined.
import base64
import io
import threading
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image, UnidentifiedImageError

from .errors import FgvcError
from .run import Run, load_run

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
  const j = await r.json();
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


class ModelService:
    """The model behind the server: one image in, top-k classes and an overlay out (thread-safe)."""

    def __init__(self, run: Run, max_bytes: int):
        self.run = run
        self.max_bytes = max_bytes
        self.lock = threading.Lock()

    def decode(self, data: bytes) -> Image.Image:
        """The upload as an RGB image. Raises ValueError with a message for the user."""
        if len(data) > self.max_bytes:
            raise OverflowError(f"the upload is {len(data) / 2**20:.1f} MB; the limit is "
                                f"{self.max_bytes / 2**20:.1f} MB")
        if not data:
            raise ValueError("the upload is empty")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return im.convert("RGB")
        except UnidentifiedImageError:
            raise ValueError("the upload is not an image that PIL can read (JPEG, PNG, WebP, ...)") from None
        except (OSError, SyntaxError) as e:
            raise ValueError(f"the image cannot be decoded (truncated or corrupt): {e}") from None

    @torch.no_grad()
    def predict(self, image: Image.Image, topk: int = 5, overlay: bool = True) -> dict[str, Any]:
        from .explain import caption_for, render, to_image

        run = self.run
        x = run.preprocess.transform()(image)[None].to(run.device)
        with self.lock:
            if overlay:
                expl = run.model.explain(x)
                probs = expl.logits.float().softmax(1)
            else:
                expl, probs = None, run.probabilities(x)
        p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        top = [{"name": run.class_names[i], "id": run.class_ids[i], "index": i, "prob": v}
               for v, i in zip(p[0].tolist(), idx[0].tolist())]
        out: dict[str, Any] = {"top": top}
        if expl is not None:
            figure = render(to_image(x[0], run.preprocess.mean, run.preprocess.std), expl, 0,
                            caption_lines=caption_for(probs[0], run.class_names))
            buf = io.BytesIO()
            figure.save(buf, format="PNG")
            out["overlay"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return out


def create_app(run: Union[str, Path, Run], device: str = "auto", max_mb: float = 20.0):
    """The FastAPI application serving ``run`` (a run folder, checkpoint or loaded :class:`Run`)."""
    try:
        from fastapi import FastAPI, File, Query, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse
    except ImportError:
        raise FgvcError("fgvc serve needs FastAPI, uvicorn and python-multipart: pip install 'fgvc[serve]'") from None
    run = run if isinstance(run, Run) else load_run(run, device)
    service = ModelService(run, int(max_mb * 2**20))
    app = FastAPI(title=f"fgvc {run.method}", docs_url="/api/docs", redoc_url=None)
    title = f"{run.method} on {run.cfg.model.backbone}"
    subtitle = (f"{len(run.class_names)} classes ({run.labels.get('dataset', '')}), checkpoint {run.checkpoint.name} "
                f"(step {run.step}); JSON API: POST /api/predict, GET /api/info")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        import html

        return PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle))

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"method": run.method, "backbone": run.cfg.model.backbone, "classes": run.class_names,
                "checkpoint": str(run.checkpoint), "step": run.step, "preprocessing": run.preprocess.describe()}

    @app.post("/api/predict")
    async def predict(image: UploadFile = File(...), topk: int = Query(5, ge=1, le=1000),
                      overlay: bool = Query(False)):
        data = await image.read(service.max_bytes + 1)
        try:
            decoded = service.decode(data)
        except OverflowError as e:
            return JSONResponse({"error": str(e)}, status_code=413)
        except ValueError as e:
            return JSONResponse({"error": f"{image.filename}: {e}"}, status_code=415 if "not an image" in str(e)
                                else 422)
        return service.predict(decoded, topk=topk, overlay=overlay)

    return app


def serve(run: Union[str, Path], host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          max_mb: float = 20.0) -> None:
    """Serves a run until interrupted (Ctrl-C)."""
    try:
        import uvicorn
    except ImportError:
        raise FgvcError("fgvc serve needs FastAPI, uvicorn and python-multipart: pip install 'fgvc[serve]'") from None
    app = create_app(run, device, max_mb)
    print(f"serving {run} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve", "ModelService"]
