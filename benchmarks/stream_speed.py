"""The streaming store against the local compact store, on the same images: loading cost and
accuracy.

Both hold the same JPEGs (the compact store's encoder). The compact store is read from the
local cache folder; the stream from a local S3 server (moto, started here) through a cache
capped below the stream's size (`--cap-kb`), so chunks are downloaded and evicted as they
are in a real run. For each, in alternating rounds: the time to the first batch of a new
training loader (wall and process CPU time, the store already built), and the training
images decoded per CPU-second over a whole shuffled epoch (process CPU time of all threads,
because the machine is shared). Then `--epochs` of `fit` on each, same seed: accuracy.

    python benchmarks/stream_speed.py --rounds 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_conditions  # noqa: E402


def _s3(env: dict) -> None:
    """Start moto's S3 server, point the environment at it, make the bucket."""
    import boto3
    from moto.server import ThreadedMotoServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
               EASYCLS_STREAM_DIR="s3://bench/streams")
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket="bench")


def _cap(store: str, cap_kb: int) -> None:
    """Only the stream's cache is capped below its size (the compact store must fit)."""
    os.environ["EASYCLS_CACHE_MAX_GB"] = str(cap_kb / 1e6) if store == "stream" else "50"


def _loader(source: str, store: str, size: int, bs: int):
    from easycls.config import TrainConfig
    from easycls.data.prepare import PreparedData, build_dataloaders, load_items
    cfg = TrainConfig(source=source, size=size, bs=bs, store=store, augment=False, seed=0)
    data = PreparedData(load_items(cfg), cfg)
    return build_dataloaders(cfg, data, normalization=([0.5] * 3, [0.25] * 3)).train


def _round(source: str, store: str, size: int, bs: int) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    dl = _loader(source, store, size, bs)
    it = iter(dl)
    next(it)
    first = dict(first_batch_s=time.perf_counter() - t0, first_batch_cpu_s=time.process_time() - c0)
    n, c1 = 0, time.process_time()
    for xb, _ in dl:
        n += len(xb)
    cpu = time.process_time() - c1
    return dict(first, images=n, images_per_cpu_s=n / max(cpu, 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cap-kb", type=int, default=400, help="EASYCLS_CACHE_MAX_GB, in kB")
    ap.add_argument("--chunk-kb", type=int, default=20, help="EASYCLS_STREAM_CHUNK_MB, in kB")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stream-speed-"))
    env = dict(EASYCLS_CACHE=str(tmp / "cache"), EASYCLS_STREAM_CHUNK_MB=str(args.chunk_kb / 1e3))
    _s3(env)
    from easycls.data.builtin import materialize
    source = str(materialize("digits", tmp / "data"))
    for store in ("jpeg", "stream"):  # build both once, outside the timings
        _cap(store, args.cap_kb)
        _loader(source, store, args.size, args.bs)
    rows = []
    for r in range(args.rounds):
        for store in (("jpeg", "stream") if r % 2 == 0 else ("stream", "jpeg")):
            _cap(store, args.cap_kb)
            rows.append(dict(store=store, round=r, **_round(source, store, args.size, args.bs),
                             load=round(os.getloadavg()[0], 2)))
            print(json.dumps(rows[-1]), flush=True)
    import easycls
    accuracy = {}
    for store in ("jpeg", "stream"):
        _cap(store, args.cap_kb)
        learn = easycls.fit(source, out=str(tmp / f"run-{store}"), store=store, size=args.size,
                            bs=args.bs, epochs=args.epochs, arch="test_resnet", pretrained=False,
                            lr=3e-3, quiet=True, seed=0)
        accuracy[store] = learn.easycls.metrics["accuracy"]
    print(json.dumps(dict(accuracy=accuracy, epochs=args.epochs, conditions=machine_conditions(),
                          args=vars(args))), flush=True)


if __name__ == "__main__":
    main()
