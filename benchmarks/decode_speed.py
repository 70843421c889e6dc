"""Decode speed: plain PIL vs load_resized (JPEG draft) vs the decoded cache.

Generates ~1,000 200x200 JPEGs in a temporary directory and prints images/s for
(a) plain PIL open + convert + resize, (b) ``load_resized`` with draft,
(c) building the memory-mapped cache (thread pool), (d) reading shuffled
batches of 128 from the built memmap, plus (e) ``check_images`` and the same
decode work on a thread pool vs a process pool.

    python benchmarks/decode_speed.py --n 1000 --size 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from easycls.data.images import check_images, load_resized
from easycls.data.storage import open_pixels


def make_jpegs(folder: Path, n: int, side: int = 200) -> list[str]:
    """Smooth random photos-ish JPEGs (noise on upscaled blobs), quality 90."""
    rng = np.random.default_rng(0)
    refs = []
    for i in range(n):
        blobs = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        a = np.asarray(blobs.resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
        a = np.clip(a + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"{i:05d}.jpg", quality=90)
        refs.append(str(folder / f"{i:05d}.jpg"))
    return refs


def rate(n: int, fn: Callable[[], object], repeat: int = 3) -> float:
    """Best-of-``repeat`` images per second for ``fn`` processing ``n`` images."""
    best = min(_timed(fn) for _ in range(repeat))
    return n / best


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def plain_pil(ref: str, size: int) -> np.ndarray:
    """The usual way: full decode, convert, resize (no crop needed: square inputs)."""
    with Image.open(ref) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def _decode_chunk(args: tuple[list[str], int]) -> int:
    refs, size = args
    return sum(load_resized(r, size).size for r in refs)


def pool_rate(pool_cls: type, refs: list[str], size: int, workers: int) -> float:
    """Images/s decoding ``refs`` in chunks of 64 on a thread or process pool."""
    chunks = [(refs[i : i + 64], size) for i in range(0, len(refs), 64)]

    def run() -> None:
        with pool_cls(max_workers=workers) as pool:
            list(pool.map(_decode_chunk, chunks))

    return rate(len(refs), run)


def read_batches(array: np.ndarray, batch: int = 128) -> None:
    """Shuffled batches, as a training DataLoader would gather them."""
    order = np.random.default_rng(0).permutation(len(array))
    for i in range(0, len(order), batch):
        np.ascontiguousarray(array[np.sort(order[i : i + batch])])


def measure(refs: list[str], size: int, workers: int, tmp: str) -> dict[str, float]:
    """Images/s for each way of getting pixels."""
    n, roots = len(refs), iter(range(10**6))

    def build() -> None:  # a fresh cache dir each repeat, so every run builds (on all cores)
        open_pixels(refs, size, "cache", root=f"{tmp}/c{next(roots)}")

    out = {
        "(a) plain PIL, serial": rate(n, lambda: [plain_pil(r, size) for r in refs]),
        "(b) load_resized (draft), serial": rate(n, lambda: [load_resized(r, size) for r in refs]),
        "    ... on a thread pool": pool_rate(ThreadPoolExecutor, refs, size, workers),
        "    ... on a process pool": pool_rate(ProcessPoolExecutor, refs, size, workers),
        "(c) cache build (thread pool)": rate(n, build),
    }
    cache = open_pixels(refs, size, "cache", root=f"{tmp}/c0")
    out["(d) memmap, shuffled batches of 128"] = rate(n, lambda: read_batches(cache.pixels))
    out["(e) check_images (thread pool)"] = rate(n, lambda: check_images(refs, workers=workers))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        refs = make_jpegs(Path(tmp), args.n)
        print(
            f"{args.n} JPEGs 200x200 -> {args.size}px, {args.workers} workers, {os.cpu_count()} "
            "cores"
        )
        for label, value in measure(refs, args.size, args.workers, tmp).items():
            print(f"{label:38s} {value:9.0f} img/s")


if __name__ == "__main__":
    main()
