"""Fine-tuning from one's own run: which schedule, measured.

Source: the `digits` recipe (resnet18 from scratch, 32 px, 5 epochs). Target: 5 shape
classes (circle, square, triangle, plus, cross) drawn as blurry strokes in the style of the
8x8 digits, 400 train / 100 valid images, so the source's features are related but the
task is new. Every way trains 5 epochs in all (the ImageNet recipe: 1 frozen + 4), with
easycls's default lr for its mode, on 3 seeds:

    python benchmarks/fine_tune_schedule.py --out /tmp/ft.json
    python benchmarks/fine_tune_schedule.py --ways scratch,run --seeds 0,1,2

Prints a markdown table of validation accuracy per way and seed (docs/weights.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "plus", "cross")
EPOCHS = 5
# way -> fit settings on top of the target data (epochs counted in all)
WAYS = {
    "scratch": dict(pretrained=False, epochs=EPOCHS),
    "run": dict(epochs=EPOCHS),  # the default for a run's weights
    "imagenet": dict(freeze_epochs=1, body_lr_ratio=0.01, epochs=EPOCHS - 1),
    "f0_r1": dict(freeze_epochs=0, body_lr_ratio=1.0, epochs=EPOCHS),
    "f0_r0.3": dict(freeze_epochs=0, body_lr_ratio=0.3, epochs=EPOCHS),
    "f0_r0.1": dict(freeze_epochs=0, body_lr_ratio=0.1, epochs=EPOCHS),
    "f1_r0.3": dict(freeze_epochs=1, body_lr_ratio=0.3, epochs=EPOCHS - 1),
    # lr given: with bs 16, 4e-3 is the from-scratch default and 1e-3 the fine-tuning one;
    # the unfrozen phase runs the head at lr / 2
    "f0_r1_lr8e-3": dict(freeze_epochs=0, body_lr_ratio=1.0, lr=8e-3, epochs=EPOCHS),
    "f0_r1_lr4e-3": dict(freeze_epochs=0, body_lr_ratio=1.0, lr=4e-3, epochs=EPOCHS),
    "f0_r0.3_lr4e-3": dict(freeze_epochs=0, body_lr_ratio=0.3, lr=4e-3, epochs=EPOCHS),
}


def _shape(draw: ImageDraw.ImageDraw, kind: str, rng: np.random.Generator) -> None:
    cx, cy = rng.uniform(24, 40, 2)
    r = rng.uniform(12, 20)
    w = int(rng.integers(4, 8))
    a = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=w)
        return
    if kind in ("square", "triangle"):
        n = 4 if kind == "square" else 3
        turns = [a + 2 * math.pi * k / n for k in range(n)]
        pts = [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in turns]
        draw.polygon(pts, outline=255, width=w)
        return
    a = rng.uniform(-0.3, 0.3) + (math.pi / 4 if kind == "cross" else 0.0)
    for t in (a, a + math.pi / 2):
        dx, dy = r * math.cos(t), r * math.sin(t)
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=w)


def shape_image(kind: str, rng: np.random.Generator) -> Image.Image:
    """A 32x32 image of one shape: drawn at 64 px, reduced to 8x8 like the digits, blown up."""
    img = Image.new("L", (64, 64), 0)
    _shape(ImageDraw.Draw(img), kind, rng)
    small = img.filter(ImageFilter.GaussianBlur(2)).resize((8, 8), Image.BILINEAR)
    pixels = np.asarray(small.resize((32, 32), Image.BILINEAR), dtype=np.float64)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def shapes_folder(root: Path, n_train: int = 80, n_valid: int = 20, seed: int = 0) -> Path:
    """`root/{train,valid}/<shape>/<i>.png`, made once."""
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for kind in SHAPES:
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape_image(kind, rng).save(root / split / kind / f"{i}.png")
    (root / "done").write_text("")
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/easycls-bench/fine_tune"))
    ap.add_argument("--out", default=None, help="JSON results file (appended as runs finish)")
    args = ap.parse_args()
    import easycls
    work = Path(args.work)
    target = shapes_folder(work / "shapes")
    source = work / "digits-run"
    ways = args.ways.split(",")
    needs_source = any(WAYS[w].get("pretrained", True) for w in ways)
    if needs_source and not (source / "model.json").is_file():
        learn = easycls.fit("digits", out=str(source), overwrite=True, quiet=True, seed=0)
        print(f"source: digits, accuracy {learn.easycls.metrics['accuracy']:.3f}")
    results: dict[str, dict[str, float]] = {}
    for way in ways:
        for seed in map(int, args.seeds.split(",")):
            kw = dict(WAYS[way])
            if kw.get("pretrained", True):
                kw["weights"] = str(source)
            t0 = time.perf_counter()
            learn = easycls.fit(str(target), out=str(work / "runs" / f"{way}-{seed}"),
                                overwrite=True, quiet=True, seed=seed, arch="resnet18", size=32,
                                **kw)
            acc = learn.easycls.metrics["accuracy"]
            results.setdefault(way, {})[str(seed)] = acc
            print(f"{way} seed {seed}: accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n| way | " + " | ".join(f"seed {s}" for s in args.seeds.split(",")) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds.split(",")) + 1))
    for way, accs in results.items():
        vals = list(accs.values())
        print(f"| {way} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {np.mean(vals):.3f} |")


if __name__ == "__main__":
    main()
