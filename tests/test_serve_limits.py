"""`easycls serve` bounds memory by decoded pixels, read from each header before decoding: per
image, per request, and across the decodes in flight; a refused body still gets its 413 when
the client sends all of it first (Python's urllib)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from easycls.bundle import save_bundle
from easycls.data.images import load_resized

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from easycls.serve import PixelBudget, create_app, decode_upload  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    return save_bundle(model, tmp_path_factory.mktemp("runs") / "r", arch="test_resnet",
                       classes=["a", "b"], size=32, mean=[0.5] * 3, std=[0.25] * 3)


def grey16(w: int, h: int, seed: int = 0) -> bytes:
    """A 16-bit greyscale PNG (smooth, so it compresses well, like a scan)."""
    ramp = np.linspace(0, 65535, w * h, dtype=np.float64).reshape(h, w)
    noise = np.random.default_rng(seed).integers(0, 64, (h, w))
    buf = io.BytesIO()
    Image.fromarray((ramp + noise).clip(0, 65535).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def post(c, *files):
    return c.post("/predict", files=[("files", (n, d, "image/png")) for n, d in files])


def test_a_16_bit_upload_decodes_like_training(tmp_path, run):
    data = grey16(300, 200)
    (tmp_path / "x.png").write_bytes(data)
    served = np.asarray(decode_upload("x.png", data, 32, 10**8))
    assert np.array_equal(served, load_resized(str(tmp_path / "x.png"), 32))


def test_per_image_and_per_request_pixel_limits(run):
    with TestClient(create_app(run, device="cpu", max_megapixels=0.1)) as c:
        r = post(c, ("big.png", grey16(400, 300)))  # 0.12 MP
        assert r.status_code == 413
        assert r.json()["detail"] == ("big.png: 400x300 pixels is over the limit of 0.1 "
                                      "megapixels per image (raise it with easycls serve "
                                      "--max-megapixels)")
        ok = [(f"{i}.png", grey16(300, 300, i)) for i in range(4)]  # 4 x 0.09 MP
        assert post(c, *ok).status_code == 200
        r = post(c, *ok, ("5.png", grey16(300, 300, 5)))  # 0.45 MP > 4 x 0.1
        assert r.status_code == 413 and "over the limit of 0.4 per request" in r.json()["detail"]


def test_decodes_in_flight_stay_within_the_budget():
    """Three decodes of 60 pixels against a budget of 100: never two at once; one larger than
    the whole budget still runs, alone."""
    async def main():
        budget, running, most = PixelBudget(100), 0, 0

        async def decode(n):
            nonlocal running, most
            async with budget.hold(n):
                running += 1
                most = max(most, running)
                await asyncio.sleep(0.01)
                running -= 1
        await asyncio.gather(*(decode(60) for _ in range(3)))
        assert most == 1 and budget.peak == 60 and budget.used == 0
        most = 0
        await asyncio.gather(decode(30), decode(30), decode(30))
        assert most == 3 and budget.peak == 90
        await decode(500)
        assert budget.used == 0
    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(run):
    import uvicorn
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(run, device="cpu", max_mb=1.0), port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(500):
        if srv.started:
            break
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_urllib_sending_the_whole_body_reads_the_413(server):
    """urllib writes the whole body before it reads: the server reads (and drops) it, then
    answers, so the client gets the 413, not a reset connection."""
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += b"\0" * (8 << 20) + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(server + "/predict", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 413
    assert "over the limit of 1 MB" in json.loads(e.value.read())["detail"]
