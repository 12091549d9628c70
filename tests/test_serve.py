"""fgvc serve: the page in a real headless browser (upload an image, read the top-5 names), the JSON endpoint,
and bad uploads that get a clear 4xx answer while the server keeps serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

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

    with BackgroundServer(create_app(run_dir, device="cpu", max_mb=1.0)) as s:
        yield s


def post(url: str, filename: str, data: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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


def test_the_json_api_and_bad_uploads(server, run_dir, tmp_path):
    good = an_image(run_dir).read_bytes()
    code, body = post(server.url + "/api/predict?topk=3", "bird.jpg", good)
    assert code == 200 and len(body["top"]) == 3 and abs(sum(p["prob"] for p in body["top"]) - 1) < 1.0
    assert "overlay" not in body
    code, body = post(server.url + "/api/predict", "notes.txt", b"these are not pixels")
    assert 400 <= code < 500 and "not an image" in body["error"]
    code, body = post(server.url + "/api/predict", "cut.jpg", good[: len(good) // 2])
    assert 400 <= code < 500 and "cannot be decoded" in body["error"]
    code, body = post(server.url + "/api/predict", "huge.jpg", good + b"\0" * (2 * 2**20))
    assert code == 413 and "limit" in body["error"]
    code, body = post(server.url + "/api/predict?overlay=true", "bird.jpg", good)  # still serving
    assert code == 200 and len(body["top"]) == 5 and body["overlay"].startswith("data:image/png")
    with urllib.request.urlopen(server.url + "/api/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["method"] == "baseline" and info["preprocessing"]["img_size"] == 64
