"""Shared helpers for the side-by-side benchmarks: an ASL-like JPEG folder and alternating timing.

The folder is generated once into a cache directory (never committed): ``N`` 200x200
JPEGs in 29 class folders (like the ASL alphabet set), each class a fixed hand-like
glyph of coloured blobs, jittered in position, scale and colour on a noisy background,
so a small network learns it in a few epochs from scratch and accuracy is comparable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["asl_like_folder", "alternate", "machine_conditions", "run_version", "each_way"]

N_CLASSES = 29


def _glyph(cls: int) -> list[tuple[str, tuple[float, float, float, float], tuple[int, int, int]]]:
    """Shapes (kind, box in 0..1, colour) that make up class `cls`'s sign."""
    rng = np.random.default_rng(1000 + cls)
    shapes = []
    for _ in range(4):
        x, y = rng.uniform(0.15, 0.7, 2)
        w, h = rng.uniform(0.1, 0.35, 2)
        kind = ("ellipse", "rectangle")[int(rng.integers(2))]
        shapes.append((kind, (x, y, x + w, y + h), tuple(int(c) for c in rng.integers(40, 256, 3))))
    return shapes


def _draw(cls: int, rng: np.random.Generator, side: int) -> Image.Image:
    bg = rng.integers(0, 256, 3)
    base = np.clip(bg + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    scale, dx, dy = rng.uniform(0.8, 1.15), *rng.uniform(-0.1, 0.1, 2)
    for kind, (x0, y0, x1, y1), colour in _glyph(cls):
        box = [
            ((v - 0.5) * scale + 0.5 + d) * side
            for v, d in ((x0, dx), (y0, dy), (x1, dx), (y1, dy))
        ]
        box = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
        jitter = tuple(int(np.clip(c + rng.normal(0, 20), 0, 255)) for c in colour)
        getattr(draw, kind)(box, fill=jitter)
    return img.filter(ImageFilter.GaussianBlur(1.0))


def asl_like_folder(n: int = 2000, side: int = 200, root: str | os.PathLike | None = None) -> Path:
    """A class-folder JPEG dataset of `n` images, generated once (reused when complete).

    Example:
        >>> path = asl_like_folder(2000)   # <cache>/asl_like-2000-200/<class>/<i>.jpg
    """
    root = Path(
        root or os.environ.get("EASYCLS_BENCH_DATA", Path.home() / ".cache" / "easycls-bench")
    )
    folder = root / f"asl_like-{n}-{side}"
    if (folder / "DONE").exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = i % N_CLASSES
        sub = folder / f"{chr(65 + cls) if cls < 26 else ('del', 'nothing', 'space')[cls - 26]}"
        sub.mkdir(parents=True, exist_ok=True)
        _draw(cls, rng, side).save(sub / f"{i:05d}.jpg", quality=90)
    (folder / "DONE").write_text(str(n))
    return folder


def alternate(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each named run once per round, in alternating order, so load hits all alike."""
    out: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(runs[name]())
            print(f"  round {r}: {name}: {out[name][-1]:.3f}", flush=True)
    return out


def machine_conditions() -> dict:
    """Cores, load average and time, to print beside every result."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(cores=cores, loadavg=[round(x, 2) for x in os.getloadavg()],
                time=time.strftime("%Y-%m-%d %H:%M:%S"))


def _check_source(src: str, cwd: Path) -> None:
    """Fail unless a child with PYTHONPATH=src imports easycls from `src`."""
    env = {**os.environ, "PYTHONPATH": src}
    where = subprocess.run([sys.executable, "-c", "import easycls; print(easycls.__file__)"],
                           env=env, cwd=cwd, capture_output=True, text=True, check=True)
    if not Path(where.stdout.strip()).resolve().is_relative_to(Path(src).resolve()):
        raise SystemExit(f"PYTHONPATH={src} imports easycls from {where.stdout.strip()}")


_CHECKED: set[tuple[str, str]] = set()


def run_version(src: str, args: Sequence[str], cwd: Path) -> dict:
    """`python -m easycls ARGS` with easycls imported from the source tree `src`, on CPU.

    Runs in `cwd`, which must not be a checkout: `python -m` puts the working directory
    first on sys.path, ahead of PYTHONPATH, and would run the checkout's easycls whatever
    `src` says (checked once per tree). Returns wall s, child CPU s and peak RSS (MB, from
    `wait4`); raises with the end of stderr if the command fails.
    """
    if (src, str(cwd)) not in _CHECKED:
        _check_source(src, cwd)
        _CHECKED.add((src, str(cwd)))
    env = {**os.environ, "PYTHONPATH": src, "CUDA_VISIBLE_DEVICES": ""}
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "easycls", *map(str, args)], env=env,
                             cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"easycls {args[0]} failed with {src}: {child.stderr.read()[-2000:]}")
    child.stderr.close()
    return dict(wall=wall, cpu=usage.ru_utime + usage.ru_stime, maxrss_mb=usage.ru_maxrss / 1024)


def each_way(child: str, args: Sequence, ways: Sequence[str]) -> dict[str, dict]:
    """Run the script `child` once per way, each in a fresh process (`python -c child *args
    way`), and collect the JSON object each prints on its last line."""
    out = {}
    for way in ways:
        res = subprocess.run([sys.executable, "-c", child, *map(str, args), way],
                             capture_output=True, text=True, check=True)
        out[way] = json.loads(res.stdout.strip().splitlines()[-1])
        print(way, out[way], flush=True)
    return out
