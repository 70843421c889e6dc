"""Peak RSS of `easycls serve` under large images: memory is bounded by decoded pixels.

Starts `easycls serve` (an untrained resnet18 bundle at 224 px), samples the server's RSS
every 10 ms, and sends in turn:

- 3 concurrent requests, each one 16-bit grey 9400 x 9400 PNG (88 MP, a few hundred kB);
- one request of 4 RGB 9400 x 9400 PNGs (353 MP, under the 4 x 90 MP request limit);
- one request of 6 RGB 9400 x 9400 PNGs (530 MP: refused with a 413);
- one request of 6 RGB 6000 x 6000 PNGs (216 MP).

Prints, per case, the HTTP statuses, the seconds and the server's peak RSS (its baseline
before the case, and the peak during it).

    python benchmarks/serve_memory.py
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_conditions  # noqa: E402
from serve_load import free_port, make_run, rss_mb, wait_until_up  # noqa: E402


def grey16(side: int) -> bytes:
    row = np.linspace(0, 65535, side, dtype=np.float64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (side, side)).copy()).save(buf, "PNG")
    return buf.getvalue()


def rgb(side: int, seed: int) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.float64).astype(np.uint8)
    img = np.empty((side, side, 3), np.uint8)
    img[..., 0] = ramp
    img[..., 1] = ramp[::-1]
    img[..., 2] = seed * 40
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


class Peak:
    """The highest RSS of `pid` while inside, sampled every 10 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self.base = rss_mb(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def send(url: str, files: list[tuple[str, bytes]]) -> int:
    r = httpx.post(url + "predict", files=[("files", (n, d, "image/png")) for n, d in files],
                   timeout=600)
    return r.status_code


def main() -> None:
    print(machine_conditions())
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp), "resnet18", 224)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "easycls", "serve", str(run), "--port",
                                 str(port), "--max-mb", "64"], env=os.environ)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_up(url.rstrip("/"), proc)
            send(url, [("warm.png", rgb(64, 0))])
            g16, big, mid = grey16(9400), rgb(9400, 1), rgb(6000, 2)
            print(f"bodies: 16-bit 9400^2 {len(g16) / 1e3:.0f} kB, RGB 9400^2 "
                  f"{len(big) / 1e3:.0f} kB, RGB 6000^2 {len(mid) / 1e3:.0f} kB")
            cases = [
                ("3 concurrent 16-bit 9400x9400", [[("g.png", g16)]] * 3),
                ("1 request, 4 RGB 9400x9400", [[(f"{i}.png", big) for i in range(4)]]),
                ("1 request, 6 RGB 9400x9400", [[(f"{i}.png", big) for i in range(6)]]),
                ("1 request, 6 RGB 6000x6000", [[(f"{i}.png", mid) for i in range(6)]]),
            ]
            for name, requests in cases:
                with Peak(proc.pid) as p, ThreadPoolExecutor(len(requests)) as pool:
                    t0 = time.perf_counter()
                    codes = list(pool.map(lambda f: send(url, f), requests))
                    seconds = time.perf_counter() - t0
                print(f"{name}: statuses {codes}, {seconds:.1f} s, RSS {p.base:.0f} MB before, "
                      f"peak {p.peak:.0f} MB")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
