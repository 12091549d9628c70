"""fgvc serve: the page in a real headless browser (upload an image, read the top-5 names), the JSON endpoint,
bad uploads that each get a 4xx JSON answer while the server keeps serving (a decompression bomb, a huge image,
a body over the limit with and without Content-Length), the same decoding as `fgvc predict`, batching that
gives the same answers, and the event loop free while predictions run."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fgvc.cli import main

from browser import BackgroundServer, chromium


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    assert main(["train", "smoke/baseline", f"out={out}", "train.epochs=1", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    from fgvc.serve import create_app

    app = create_app(run_dir, device="cpu", max_mb=1.0, max_pixels=40_000_000)
    with BackgroundServer(app) as s:
        s.service = app.state.service
        yield s


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, filename: str, data: bytes) -> tuple[int, dict]:
    body, ctype = multipart(filename, data)
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw_post(port: int, head: bytes, chunks, pause: float = 0.0) -> tuple[int, dict, float]:
    """Sends a request by hand (its body in ``chunks``, stopping when the server closes) and reads the answer:
    (status, JSON body, seconds until the answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    t0 = time.time()
    try:
        s.sendall(head)
        for c in chunks:
            try:
                s.sendall(c)
            except OSError:  # the server answered and closed: the rest is never sent
                break
            time.sleep(pause)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                dict(line.split(b": ", 1) for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
                     if b": " in line).get(b"content-length", b"0")):
            part = s.recv(65536)
            if not part:
                break
            data += part
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1]), time.time() - t0


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def declared_png(width: int, height: int, rows: int = 1) -> bytes:
    """A grey PNG declaring ``width x height``: with ``rows=1`` a 99-byte decompression bomb (its data stops
    after a row); with ``rows=height`` a complete, highly compressible image."""
    comp = zlib.compressobj(9)
    row = b"\0" + b"\0" * ((width + 7) // 8)
    data = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def an_image(run_dir: Path) -> Path:
    from fgvc.run import load_run

    return Path(load_run(run_dir, device="cpu").records("test")[0].path)


def test_a_browser_upload_shows_five_class_names(server, run_dir):
    names = json.loads((run_dir / "labels.json").read_text())["class_names"]
    driver = chromium()
    try:
        driver.get(server.url + "/")
        assert "fgvc" in driver.title
        driver.find_element("id", "file").send_keys(str(an_image(run_dir)))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements("css selector", "#top5 li")) == 5)
        shown = [e.text for e in driver.find_elements("css selector", "#top5 li .name")]
        assert len(shown) == 5 and all(n in names for n in shown)
        assert driver.find_element("id", "overlay").get_attribute("src").startswith("data:image/png;base64,")
    finally:
        driver.quit()


def test_the_json_api_and_bad_uploads_each_get_a_4xx_json_answer(server, run_dir):
    good = an_image(run_dir).read_bytes()
    url = server.url + "/api/predict"
    code, body = post(url + "?topk=3", "bird.jpg", good)
    assert code == 200 and len(body["top"]) == 3 and abs(sum(p["prob"] for p in body["top"]) - 1) < 1.0
    assert "overlay" not in body
    cases = [("notes.txt", b"these are not pixels", 415, "not an image"),
             ("cut.jpg", good[: len(good) // 2], 422, "cannot be decoded"),
             ("bomb.png", declared_png(20000, 20000), 413, "megapixels"),
             ("huge.png", declared_png(7000, 7000, rows=7000), 413, "7000 x 7000 pixels")]
    assert len(cases[2][1]) < 120 and len(cases[3][1]) < 1_000_000
    for name, data, status, words in cases:
        code, body = post(url, name, data)
        assert code == status and words in body["error"] and set(body) == {"error"}, (name, code, body)
    code, body = post(url + "?topk=0", "bird.jpg", good)
    assert code == 422 and "topk" in body["error"] and set(body) == {"error"}
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + "/api/nope", timeout=30)
    assert e.value.code == 404 and "error" in json.loads(e.value.read())
    # a body over the limit: refused from its Content-Length before it is sent, and while it streams without one
    body, ctype = multipart("big.jpg", b"\0" * (200 * 10**6))
    head = (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
    status, answer, seconds = raw_post(server.port, head, [body[:1000]], pause=0.5)
    assert status == 413 and "200.0 MB" in answer["error"] and "limit is 1 MB" in answer["error"] and seconds < 10
    head = (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
    piece = b"\0" * 65536
    pieces = [body[:300]] + [piece] * 100  # the multipart head, then 6.5 MB of the file if all were sent
    chunks = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in pieces]
    status, answer, _ = raw_post(server.port, head, chunks)
    assert status == 413 and "passed the limit of 1 MB" in answer["error"]
    code, body = post(url + "?overlay=true", "bird.jpg", good)  # still serving
    assert code == 200 and len(body["top"]) == 5 and body["overlay"].startswith("data:image/png")
    with urllib.request.urlopen(server.url + "/api/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["method"] == "baseline" and info["preprocessing"]["img_size"] == 64
    with urllib.request.urlopen(server.url + "/api/docs", timeout=30) as r:
        page = r.read().decode()
    assert "/api/predict" in page and "<script" not in page and "cdn" not in page.lower()


def test_rgba_and_16_bit_pngs_get_the_top_5_of_fgvc_predict(server, run_dir, tmp_path):
    from fgvc.inference import Predictor

    rgb = np.asarray(Image.open(an_image(run_dir)).convert("RGB").resize((64, 64)))
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 255  # a transparent border: composited over white, not black
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    grey = (np.asarray(Image.fromarray(rgb).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(grey).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    predictor = Predictor(run_dir, device="cpu")
    for f in ("rgba.png", "deep.png"):
        expected = predictor.predict([tmp_path / f], topk=5)[0]
        code, body = post(server.url + "/api/predict", f, (tmp_path / f).read_bytes())
        assert code == 200, body
        assert [p["name"] for p in body["top"]] == [p["name"] for p in expected], f
        assert np.allclose([p["prob"] for p in body["top"]], [p["prob"] for p in expected], atol=1e-5), f


def test_requests_that_arrive_together_are_batched_and_answered_as_alone(server, run_dir):
    images = sorted(Path(an_image(run_dir)).parent.parent.rglob("*.jpg"))[:12]
    alone = [post(server.url + "/api/predict?topk=3", p.name, p.read_bytes())[1]["top"] for p in images]
    before = (server.service.batches, server.service.batched)
    answers: dict[int, list] = {}

    def client(i):
        answers[i] = post(server.url + "/api/predict?topk=3", images[i].name, images[i].read_bytes())[1]["top"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    info_seconds = []
    for _ in range(5):  # the event loop answers while the predictions run
        t0 = time.time()
        with urllib.request.urlopen(server.url + "/api/info", timeout=30) as r:
            assert r.status == 200
        info_seconds.append(time.time() - t0)
    for t in threads:
        t.join()
    passes, imgs = server.service.batches - before[0], server.service.batched - before[1]
    assert imgs == len(images) and passes < imgs  # some forward passes held several requests
    for i, top in answers.items():
        assert [p["name"] for p in top] == [p["name"] for p in alone[i]]
        assert np.allclose([p["prob"] for p in top], [p["prob"] for p in alone[i]], atol=1e-5)
    assert max(info_seconds) < 2.0, info_seconds


@pytest.mark.parametrize("method", ["cal", "pmg"])
def test_cal_and_pmg_are_served_with_their_overlays(method, smoke_run):
    from fgvc.serve import create_app

    run = smoke_run(method)
    with BackgroundServer(create_app(run, device="cpu")) as s:
        code, body = post(s.url + "/api/predict?overlay=true", "x.jpg", an_image(run).read_bytes())
    assert code == 200 and len(body["top"]) == 5 and body["overlay"].startswith("data:image/png;base64,")


def test_every_error_is_one_json_shape_with_the_security_headers_and_no_path(server):
    """405, a malformed multipart body, a field that is not a file, an unknown long path, a validation error:
    each {"error": ...}, with nosniff, no-store and a frame policy; /api/info names no file path."""

    def ask(method: str, path: str, body: bytes = b"", ctype: str = "") -> tuple[int, dict, Any]:
        req = urllib.request.Request(server.url + path, data=body or None, method=method,
                                     headers={"Content-Type": ctype} if ctype else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read()), r.headers
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), e.headers

    boundary = uuid.uuid4().hex
    not_a_file = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\njust text\r\n"
                  f"--{boundary}--\r\n").encode()
    cases = [("GET", "/api/predict", b"", "", 405, "GET is not allowed"),
             ("POST", "/api/predict", b"--x\r\nbroken", "multipart/form-data; boundary=x", 422, "image"),
             ("POST", "/api/predict", not_a_file, f"multipart/form-data; boundary={boundary}", 422,
              "the multipart field 'image' must be an image file"),
             ("GET", "/" + "a" * 100_000, b"", "", 404, "characters)"),
             ("POST", "/api/predict?topk=x", not_a_file, f"multipart/form-data; boundary={boundary}", 422, "topk")]
    for method, path, body, ctype, status, words in cases:
        code, answer, headers = ask(method, path, body, ctype)
        assert code == status and set(answer) == {"error"} and words in answer["error"], (path[:30], code, answer)
        assert "<class" not in answer["error"] and len(answer["error"]) < 400
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
        assert headers["X-Frame-Options"] == "DENY"
    code, info, headers = ask("GET", "/api/info")
    assert code == 200 and "/" not in info["checkpoint"] and info["serving"]["token"] is False
    assert headers["Referrer-Policy"] == "no-referrer"
    body, ctype = multipart("bomb.png", declared_png(20000, 20000))
    code, answer, _ = ask("POST", "/api/predict", body, ctype)
    assert code == 413 and "declares 400 megapixels" in answer["error"], answer


def test_a_body_that_stops_arriving_is_answered_408_and_closed(run_dir):
    from fgvc.serve import create_app

    with BackgroundServer(create_app(run_dir, device="cpu", body_timeout=1.0)) as s:
        body, ctype = multipart("bird.jpg", an_image(run_dir).read_bytes())
        head = (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
                "\r\n\r\n").encode()
        status, answer, seconds = raw_post(s.port, head, [body[:200]])
        assert status == 408 and "no part of the request body arrived for 1 s" in answer["error"], answer
        assert 0.9 < seconds < 10
        code, answer = post(s.url + "/api/predict", "bird.jpg", an_image(run_dir).read_bytes())  # still serving
        assert code == 200 and len(answer["top"]) == 5


def test_a_token_guards_every_route_and_the_page_sends_it(run_dir):
    from fgvc.serve import create_app

    with BackgroundServer(create_app(run_dir, device="cpu", token="s3cret")) as s:
        for path in ("/", "/api/info"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(s.url + path, timeout=30)
            assert e.value.code == 401 and "needs its token" in json.loads(e.value.read())["error"]
        body, ctype = multipart("bird.jpg", an_image(run_dir).read_bytes())
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                ({"Authorization": "Bearer s3cret"}, 200)):
            req = urllib.request.Request(s.url + "/api/predict", data=body, headers={"Content-Type": ctype, **headers})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            assert code == status, headers
        driver = chromium()
        try:
            driver.get(s.url + "/?token=s3cret")
            driver.find_element("id", "file").send_keys(str(an_image(run_dir)))
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements("css selector", "#top5 li")) == 5)
        finally:
            driver.quit()


def test_serving_beyond_loopback_without_a_token_is_refused_in_one_line(run_dir, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("FGVC_SERVE_TOKEN", raising=False)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "fgvc", "serve", str(run_dir), "--host", "0.0.0.0", "--port", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "give it a token (--token" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and time.time() - t0 < 60


def test_a_burst_of_large_images_gives_its_memory_back(run_dir):
    """Eight 6300 x 6300 PNGs at once (under the 40 MP limit): the service's resident memory returns to within 10%
    of its idle figure (it stayed at its peak, +80%)."""
    import subprocess
    import sys

    from browser import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fgvc", "serve", str(run_dir), "--port", str(port), "--device",
                             "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def rss_mib() -> float:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024

    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/api/info", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        small = an_image(run_dir).read_bytes()
        for _ in range(3):
            assert post(url + "/api/predict", "bird.jpg", small)[0] == 200
        time.sleep(1)
        idle = rss_mib()
        side = 6300
        y, x = np.mgrid[0:side, 0:side]
        pixels = np.stack([(x // 700 % 2) * 200, (y // 900 % 2) * 180, ((x + y) // 1300 % 2) * 160], -1)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
        large = buffer.getvalue()
        codes: list[int] = []
        clients = [threading.Thread(target=lambda: codes.append(post(url + "/api/predict", "large.png", large)[0]))
                   for _ in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        time.sleep(2)
        after = rss_mib()
        assert codes == [200] * 8
        assert after <= 1.1 * idle, (idle, after)
    finally:
        proc.terminate()
        proc.wait(30)
    said = proc.stdout.read().splitlines()
    # a line while it loads, then one when it serves; no parser notes or Pillow warnings in the log
    assert said[0].startswith(f"loading {run_dir} on cpu") and said[1].startswith("serving on http://127.0.0.1:")
    assert not any("multipart" in line or "DecompressionBomb" in line for line in said), said


def test_beyond_loopback_with_a_token_the_service_warns_in_one_line(run_dir):
    import subprocess
    import sys

    from browser import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fgvc", "serve", str(run_dir), "--host", "0.0.0.0", "--port",
                             str(port), "--device", "cpu", "--token", "s3cret"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(30)
    assert lines[1].startswith(f"warning: serving beyond this machine on 0.0.0.0:{port}; every request must send the "
                               "token"), lines
    assert lines[2].startswith(f"serving on http://0.0.0.0:{port}/"), lines
