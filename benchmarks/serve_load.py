"""Load test of `easycls serve` on 127.0.0.1: the torch server and the onnxruntime one
(`--onnx`) side by side, with batching on and off.

Starts `easycls serve` once per server and `--max-batch` value, warms it up, then sends
`--requests` POST /predict requests (one PNG each), `--concurrency` at a time, from an async
httpx client, and stops. Prints requests/s, p50/p99 latency, failed requests, the mean batch
the server ran and the server's RSS before and after the load; then each server's best
requests/s side by side. The settings alternate round by round, so a change in the machine's
load hits all of them.

    python benchmarks/serve_load.py                      # an untrained resnet18 bundle, 64 px
    python benchmarks/serve_load.py --run runs/digits-resnet18-... --max-batch 1,32
    python benchmarks/serve_load.py --servers torch      # the torch server only
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_conditions  # noqa: E402


def make_run(folder: Path, arch: str, size: int) -> Path:
    """A bundle of an untrained timm model: serving cost does not depend on the weights."""
    import timm

    from easycls.bundle import save_bundle
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    classes = [str(i) for i in range(10)]
    return save_bundle(model, folder / f"bench-{arch}", arch=arch, classes=classes, size=size,
                       mean=[0.5] * 3, std=[0.25] * 3)


def images(n: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, payloads: list[bytes], requests: int, concurrency: int) -> dict:
    """Send `requests` posts, `concurrency` in flight; latencies in ms and the failures."""
    latencies, failures = [], 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal failures
            async with gate:
                t = time.perf_counter()
                image = (f"{i}.png", payloads[i % len(payloads)])
                r = await client.post("/predict", files={"files": image})
                latencies.append((time.perf_counter() - t) * 1000)
                failures += r.status_code != 200
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return dict(requests=requests, failed=failures, seconds=round(wall, 2),
                throughput=round(requests / wall, 1),
                p50_ms=round(float(np.percentile(lat, 50)), 1),
                p99_ms=round(float(np.percentile(lat, 99)), 1))


def exported(run: Path) -> None:
    """RUN/onnx/model.onnx, for the onnxruntime server (exported once)."""
    if not (run / "onnx" / "model.onnx").is_file():
        from easycls.export import export
        export(run)


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    """Until the server at `url` answers /healthz (its stderr, if it dies first)."""
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            if server.poll() is not None:
                raise SystemExit((server.stderr.read() if server.stderr else b"").decode()) \
                    from None
            time.sleep(0.2)


def measure(run: Path, kind: str, max_batch: int, args, payloads: list[bytes]) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "easycls", "serve", str(run), "--port", str(port),
           "--max-batch", str(max_batch)] + (["--onnx"] if kind == "onnx" else [])
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server)
        asyncio.run(load(url, payloads, args.concurrency * 4, args.concurrency))  # warm-up
        before = rss_mb(server.pid)
        start = httpx.get(url + "/healthz").json()
        result = asyncio.run(load(url, payloads, args.requests, args.concurrency))
        middle = rss_mb(server.pid)
        if args.again:  # the same load again: does memory keep growing?
            asyncio.run(load(url, payloads, args.requests, args.concurrency))
        end = httpx.get(url + "/healthz").json()
        batches = end["batches"] - start["batches"]
        images_run = end["images"] - start["images"]
        result.update(server=kind, runtime=end["runtime"], max_batch=max_batch,
                      mean_batch=round(images_run / batches, 1),
                      rss_before_mb=round(before, 1), rss_after_mb=round(middle, 1))
        if args.again:
            result["rss_after_again_mb"] = round(rss_mb(server.pid), 1)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def summarize(results: list[dict], rounds: int) -> None:
    """Best requests/s of each (server, max_batch), the servers side by side."""
    best: dict[tuple[str, int], float] = {}
    for r in results:
        key = (r["server"], r["max_batch"])
        best[key] = max(best.get(key, 0.0), r["throughput"])
    for mb in sorted({mb for _, mb in best}):
        row = {server: tput for (server, b), tput in best.items() if b == mb}
        side = ", ".join(f"{server} {tput:.1f} req/s" for server, tput in row.items())
        ratio = (f"; onnx/torch {row['onnx'] / row['torch']:.2f}x" if {"onnx", "torch"} <= set(row)
                 else "")
        print(f"max_batch {mb}: {side}{ratio} (best of {rounds} each)")
    for server in sorted({s for s, _ in best}):
        batched = {mb: t for (s, mb), t in best.items() if s == server}
        for mb, tput in batched.items():
            if 1 in batched and mb != 1:
                print(f"{server} max_batch {mb}: {tput / batched[1]:.2f}x the throughput of "
                      f"max_batch 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run directory to serve (default: untrained bundle)")
    ap.add_argument("--arch", default="resnet18", help="arch of the generated bundle")
    ap.add_argument("--size", type=int, default=64, help="input size of the generated bundle")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", default="1,32", help="server batch sizes to compare")
    ap.add_argument("--servers", default="torch,onnx",
                    help="torch (the run's bundle) and/or onnx (`easycls serve --onnx`)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the settings this often")
    ap.add_argument("--again", action="store_true",
                    help="repeat the load once more and report the RSS after it")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    payloads = images(64, 96)
    servers = args.servers.split(",")
    batches = [int(x) for x in args.max_batch.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp), args.arch, args.size)
        if "onnx" in servers:
            exported(run)
        print(json.dumps({"run": str(run), **machine_conditions()}))
        results = []
        for _ in range(args.rounds):  # alternating, so a change in machine load hits all
            for mb in batches:
                for server in servers:
                    results.append(measure(run, server, mb, args, payloads))
                    print(json.dumps(results[-1]), flush=True)
    summarize(results, args.rounds)
    print(json.dumps({"after": machine_conditions()}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
