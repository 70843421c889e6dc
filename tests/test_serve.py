"""`easycls serve`: the REST API, refusals of bad uploads, batching, the page in a real browser."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from easycls.bundle import load, save_bundle

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from easycls.serve import Batcher, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def png(size=(40, 30), seed=0, fmt="PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES))
    out = save_bundle(model, tmp_path_factory.mktemp("runs") / "pets", arch="test_resnet",
                      classes=CLASSES, size=32, mean=[0.5] * 3, std=[0.25] * 3)
    (out / "metrics.json").write_text(json.dumps({"accuracy": 0.75, "valid_loss": 0.5}))
    return out


@pytest.fixture(scope="module")
def exported(run) -> Path:
    """The run exported to ONNX (run/onnx), for the onnxruntime server."""
    pytest.importorskip("onnxscript")
    from easycls.export import export
    return export(run, max_check=4).model.parent


# Every test of `client` runs on both servers: the torch one and the onnxruntime one.
@pytest.fixture(scope="module", params=["torch", "onnx"])
def client(request, run):
    if request.param == "onnx":
        request.getfixturevalue("exported")
    app = create_app(run, onnx=request.param == "onnx", token="s3cret", max_mb=1.0,
                     device="cpu")
    with TestClient(app) as c:
        c.headers["Authorization"] = "Bearer s3cret"
        assert c.get("/healthz").json()["runtime"] == {"torch": "torch",
                                                       "onnx": "onnxruntime"}[request.param]
        yield c


def post(client, *files: tuple[str, bytes], **kw):
    return client.post("/predict", files=[("files", (n, d, "image/png")) for n, d in files], **kw)


def test_predict_several_files_like_the_predictor(client, run, tmp_path):
    data = [png(seed=i, size=(30 + 9 * i, 40)) for i in range(3)]
    r = post(client, *[(f"{i}.png", d) for i, d in enumerate(data)], params={"top_k": 3})
    assert r.status_code == 200
    rows = r.json()["predictions"]
    predictor = load(run, device="cpu")
    for i, (row, d) in enumerate(zip(rows, data)):
        (tmp_path / f"{i}.png").write_bytes(d)
        label, prob = predictor.predict(tmp_path / f"{i}.png")
        assert row["file"] == f"{i}.png" and row["label"] == label
        assert abs(row["probability"] - prob) < 1e-5
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert row["top"][0]["label"] == label


def test_model_healthz_docs_and_page(client, run):
    info = client.get("/model").json()
    assert info["name"] == "pets" and info["model"]["classes"] == CLASSES
    assert info["metrics"] == {"accuracy": 0.75, "valid_loss": 0.5}
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert "multipart/form-data" in schema["content"]
    page = client.get("/").text
    assert 'type="file"' in page and "http" not in page.split("<script>")[1]  # no CDN


def bomb() -> bytes:
    """An 18 kB PNG that decodes to 144 million pixels."""
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")
    return buf.getvalue()


def truncated() -> bytes:
    data = png(size=(64, 64), fmt="JPEG")
    return data[: len(data) // 2]


BAD = [
    ("too large", lambda c: post(c, ("big.png", png(size=(800, 800)))),
     413, "upload is over the limit of 1 MB"),
    ("not an image", lambda c: post(c, ("notes.png", b"just some text\n" * 10)),
     415, "notes.png: not an image Pillow can read"),
    ("bomb", lambda c: post(c, ("bomb.png", bomb())),
     413, "bomb.png: 12000x12000 pixels is over the limit of 90 megapixels per image"),
    ("truncated", lambda c: post(c, ("cut.jpg", truncated())),
     400, "cut.jpg: truncated image"),
    ("wrong token", lambda c: post(c, ("a.png", png()), headers={"Authorization": "Bearer nope"}),
     401, "missing or wrong token"),
    ("no files", lambda c: c.post("/predict", files={"note": (None, "hi")}),
     400, "no files"),
    ("not multipart",
     lambda c: c.post("/predict", content=png(), headers={"Content-Type": "image/png"}),
     415, "multipart/form-data"),
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("send,status,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_uploads_are_refused_with_a_reason(client, send, status, reason):
    r = send(client)
    assert r.status_code == status
    body = r.json()
    assert list(body) == ["detail"] and reason in body["detail"] and "\n" not in body["detail"]
    assert client.get("/healthz").status_code == 200  # and the server still answers
    assert post(client, ("ok.png", png())).status_code == 200


def test_size_limit_holds_without_content_length(client):
    """A chunked body (no Content-Length) is cut off while it streams in."""
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n")
    body = head.encode() + png(size=(800, 800)) + f"\r\n--{boundary}--\r\n".encode()
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    r = client.post("/predict", content=chunks,
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_multi_label_returns_every_label_above_its_threshold(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    th = {"global": 0.5, "per_class": [0.0, 1.0, 0.5], "at_least_one": False}
    run = save_bundle(model, tmp_path / "ml", arch="test_resnet", classes=["a", "b", "c"],
                      size=32, mean=[0.5] * 3, std=[0.25] * 3, multi_label=True, thresholds=th)
    (tmp_path / "x.png").write_bytes(png())
    labels, probs = load(run, device="cpu").predict(tmp_path / "x.png")
    with TestClient(create_app(run, device="cpu")) as c:
        row = post(c, ("x.png", png())).json()["predictions"][0]
        assert c.get("/model").json()["thresholds"] == th["per_class"]
    assert row["labels"] == labels and "a" in labels and "b" not in labels
    assert np.allclose(row["probabilities"], probs) and len(row["top"]) == 3


def test_no_token_needed_when_none_is_set(run):
    with TestClient(create_app(run, device="cpu")) as c:
        assert post(c, ("a.png", png())).status_code == 200
        assert c.get("/model").status_code == 200


def test_uploads_never_touch_the_disk(run, monkeypatch):
    """Files bigger than Starlette's 1 MB spool threshold still stay in memory."""
    def refuse(*a, **k):
        raise AssertionError("an upload was written to a temporary file")
    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    big = png(size=(700, 700))
    assert len(big) > 2**20
    with TestClient(create_app(run, device="cpu", max_mb=4)) as c:
        r = post(c, ("big.png", big))
    assert r.status_code == 200, r.text


# The onnxruntime server in a process where torch cannot be imported: its answers to good
# and bad uploads, and what it imported.
HEAVY = ("torch", "torchvision", "fastai", "timm", "accelerate", "pandas", "sklearn",
         "matplotlib", "safetensors", "onnx")
TORCH_FREE_SERVER = f"""
import json, sys
for m in {HEAVY}:
    sys.modules[m] = None
from fastapi.testclient import TestClient
from easycls.serve import create_app
uploads = json.loads(sys.stdin.read())
answers = []
with TestClient(create_app(sys.argv[1], onnx=True, max_mb=1.0)) as c:
    for files in uploads:
        r = c.post("/predict", files=[("files", (n, bytes.fromhex(d), "image/png"))
                                      for n, d in files])
        answers.append([r.status_code, r.json()])
    answers.append([200, c.get("/model").json()])
    answers.append([200, c.get("/healthz").json()["runtime"]])
heavy = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in {HEAVY})
print(json.dumps({{"answers": answers, "heavy": heavy}}))
"""


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_onnx_server_answers_like_the_torch_server_without_torch(run, exported):
    uploads = [[("a.png", png(seed=1)), ("b.jpg", png(seed=2, size=(90, 50), fmt="JPEG"))],
               [("c.png", png(seed=3, size=(33, 70)))],
               [("notes.png", b"just some text\n" * 10)], [("cut.jpg", truncated())],
               [("bomb.png", bomb())], [("big.png", png(size=(800, 800)))]]
    wire = json.dumps([[(n, d.hex()) for n, d in files] for files in uploads])
    done = subprocess.run([sys.executable, "-c", TORCH_FREE_SERVER, str(run)], input=wire,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["heavy"] == []  # torch never imported (and could not have been)
    *answers, (_, model), (_, runtime) = out["answers"]
    assert runtime == "onnxruntime"
    with TestClient(create_app(run, max_mb=1.0, device="cpu")) as c:
        assert c.get("/model").json() == model
        for files, (status, body) in zip(uploads, answers):
            r = post(c, *files)
            assert r.status_code == status
            if status != 200:
                assert r.json() == body  # the same refusal, word for word
                continue
            theirs = r.json()["predictions"]
            assert [row["label"] for row in body["predictions"]] == [t["label"] for t in theirs]
            got = [[t["probability"] for t in row["top"]] for row in body["predictions"]]
            want = [[t["probability"] for t in row["top"]] for row in theirs]
            assert np.abs(np.array(got) - np.array(want)).max() < 1e-4
    assert [s for s, _ in answers] == [200, 200, 415, 400, 413, 413]  # bomb: over the pixels


def test_onnx_without_an_export_is_one_clear_line(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    bare = save_bundle(model, tmp_path / "bare", arch="test_resnet", classes=["a", "b"],
                       size=32, mean=[0.5] * 3, std=[0.25] * 3)
    from typer.testing import CliRunner

    from easycls.cli import app
    result = CliRunner().invoke(app, ["serve", str(bare), "--onnx"])
    assert result.exit_code == 2
    assert "holds no onnx/model.onnx: export it first with `easycls export" in result.output


def test_core_does_not_import_the_serve_extra():
    code = ("import sys, easycls, easycls.cli, easycls.predict\n"
            "print(sorted({'fastapi', 'uvicorn', 'starlette', 'onnx'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# ---------------------------------------------------------------- batching


def _batch_sizes(max_batch: int, requests: list[int], max_wait: float = 60.0) -> list[int]:
    """Sizes of the batches `infer` saw for concurrent requests of the given image counts."""
    seen: list[int] = []

    def infer(images):
        seen.append(len(images))
        return np.arange(len(images), dtype=float)[:, None]

    async def main():
        batcher = Batcher(infer, max_batch=max_batch, max_wait=max_wait)
        await batcher.start()
        outs = await asyncio.gather(*(batcher(list(range(n))) for n in requests))
        await batcher.stop()
        return outs

    outs = asyncio.run(main())
    assert [len(out) for out in outs] == requests
    return seen


def test_batcher_groups_concurrent_requests():
    # max_wait is long, so only a full batch can end the wait: no timing involved.
    assert _batch_sizes(4, [1, 1, 1, 1]) == [4]
    assert _batch_sizes(4, [1, 2, 3]) == [6]  # a request is never split
    assert _batch_sizes(1, [1, 1, 1]) == [1, 1, 1]  # max_batch=1: batching off


def test_batcher_returns_each_request_its_rows():
    async def main():
        batcher = Batcher(lambda ims: np.array(ims, dtype=float)[:, None], max_batch=6, max_wait=60)
        await batcher.start()
        outs = await asyncio.gather(batcher([1, 2]), batcher([3]), batcher([4, 5, 6]))
        await batcher.stop()
        return outs
    a, b, c = asyncio.run(main())
    assert a[:, 0].tolist() == [1, 2] and b[:, 0].tolist() == [3] and c[:, 0].tolist() == [4, 5, 6]


def test_batcher_passes_errors_to_every_waiting_request():
    def infer(images):
        raise ValueError("model exploded")

    async def main():
        batcher = Batcher(infer, max_batch=2, max_wait=60)
        await batcher.start()
        outs = await asyncio.gather(batcher([1]), batcher([2]), return_exceptions=True)
        await asyncio.wait_for(batcher.stop(), 10)
        return outs
    outs = asyncio.run(main())
    assert [str(e) for e in outs] == ["model exploded"] * 2


# ---------------------------------------------------------------- the page in a real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `easycls serve --onnx` as a user runs it, in a process where torch cannot be imported.
SERVE_WITHOUT_TORCH = ("import sys\n"
                       f"for m in {HEAVY}:\n"
                       "    sys.modules[m] = None\n"
                       "from easycls.cli import main\n"
                       "sys.argv = ['easycls', *sys.argv[1:]]\n"
                       "main()\n")


@pytest.fixture(params=["torch", "onnx"])
def server(request, digits_run):
    port = free_port()
    args = ["serve", str(digits_run), "--port", str(port)]
    if request.param == "onnx":
        pytest.importorskip("onnxscript")
        from easycls.export import export
        if not (digits_run / "onnx" / "model.onnx").is_file():
            export(digits_run)
        cmd = [sys.executable, "-c", SERVE_WITHOUT_TORCH, *args, "--onnx"]
    else:
        cmd = [sys.executable, "-m", "easycls", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    import httpx
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.2)
        runtime = httpx.get(url + "healthz").json()["runtime"]
        assert runtime == {"torch": "torch", "onnx": "onnxruntime"}[request.param]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(),
                    reason="needs Debian's chromium (.ci/run installs it)")
def test_page_labels_uploaded_digits(server, digits_folder, digits_run, tmp_path, request):
    sync_api = pytest.importorskip("playwright.sync_api")
    images = []
    for digit in ("7", "3", "5"):  # enlarged, as a photo would be; the server resizes back
        source = sorted((digits_folder / "valid" / digit).glob("*.png"))[0]
        images.append(tmp_path / f"digit_{digit}.png")
        Image.open(source).resize((128, 128), Image.Resampling.NEAREST).save(images[-1])
    predictor = load(digits_run, device="cpu")
    expected = {p.name: predictor.predict(p)[0] for p in images}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1000, "height": 720})
        page.goto(server)
        page.wait_for_function("document.getElementById('metrics').rows.length > 0")
        page.set_input_files("#file", [str(p) for p in images])
        page.locator(".card").nth(len(images) - 1).wait_for(timeout=60_000)
        for name, label in expected.items():
            card = page.locator(f'.card[data-file="{name}"]')
            assert card.locator(".label").inner_text() == label
            assert card.locator(".bar").count() == 5  # top-5 bars
        assert "accuracy" in page.locator("#metrics").inner_text()
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        browser.close()
    torch_server = request.node.callspec.params["server"] == "torch"
    if os.environ.get("EASYCLS_DOCS_SCREENSHOT") and torch_server:  # docs/use.md's picture
        shutil.copy(tmp_path / "serve.png", REPO / "docs" / "img" / "serve.png")
