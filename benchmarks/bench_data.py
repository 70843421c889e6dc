"""Generated benchmark data for the accuracy-per-second runs (never committed).

Three datasets, made once under ``$EASYCLS_BENCH_DATA`` (default ``~/.cache/easycls-bench``):

- ``asl_folder(n)``: an ASL-like class folder, 29 classes (A-Z, del, nothing, space) of
  128x128 JPEGs. A class is a fixed "hand sign" of four to six strokes and blobs; each
  image draws it with its own skin tone, pose (rotation, scale, shift), stroke jitter,
  blur and noise, on a textured background cut from scikit-learn's two sample photos.
  Classes come in pairs that share a palm and a colour family (jittered per image), so
  colour narrows a sign down to two classes and only the fingers tell the pair apart.
  Learnable from scratch, but not in one epoch.
- ``hard_folder(n)``: the harder class folder, 40 classes of 96x96 JPEGs, 60 images a
  class. Classes come in groups of four that share a palm, and in pairs that share a colour
  family jittered per image; one finger of each class is drawn one of two ways (a sign made
  with either hand); each image adds a distractor stroke in any colour and pose, and one in
  ten an occluding patch. Plain fastai without augmentation reaches about 0.3 in 3 epochs
  from scratch, where it reaches about 0.44 on the ASL-like folder (docs/performance.md).
- ``mosaic_csv(n)``: a COMP5329-like multi-label set, ``train.csv`` with the header
  ``ImageID,Labels,Caption`` (labels 1-19 without 12, space-separated; captions with
  unquoted commas) and ``data/<id>.jpg``. An image shows one to four objects, each label
  a fixed glyph; label frequencies follow a steep power law, so a few labels are rare.

    python benchmarks/bench_data.py        # prints the three paths
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["asl_folder", "hard_folder", "mosaic_csv", "bench_root", "ASL_CLASSES", "MOSAIC_LABELS"]

ASL_CLASSES = [chr(65 + i) for i in range(26)] + ["del", "nothing", "space"]
MOSAIC_LABELS = [str(i) for i in range(1, 20) if i != 12]
_WORDS = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
          "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
          "dog", "horse"]


def bench_root() -> Path:
    return Path(os.environ.get("EASYCLS_BENCH_DATA", Path.home() / ".cache" / "easycls-bench"))


def _backgrounds() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images
    return [np.asarray(img) for img in load_sample_images().images]


def _background(photos: list[np.ndarray], rng: np.random.Generator, side: int) -> Image.Image:
    """A random crop of a sample photo, rescaled, colour-shifted and sometimes mirrored."""
    photo = photos[int(rng.integers(len(photos)))]
    crop = int(rng.integers(side // 2, min(photo.shape[:2])))
    y, x = (int(rng.integers(0, d - crop + 1)) for d in photo.shape[:2])
    patch = photo[y:y + crop, x:x + crop].astype(np.float32)
    patch = patch * rng.uniform(0.4, 0.8, 3) + rng.uniform(-30, 30, 3)
    img = Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)).resize((side, side))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def _strokes(seed: int, n: int) -> list[tuple]:
    """`n` parts of a sign: ("line", points, width) or ("blob", box), in 0..1 coordinates."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n):
        if rng.random() < 0.6:
            x, y = rng.uniform(0.25, 0.75, 2)
            ang, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.4)
            pts = [(x, y), (x + length * math.cos(ang), y + length * math.sin(ang))]
            parts.append(("line", pts, rng.uniform(0.07, 0.12)))
        else:
            x, y = rng.uniform(0.3, 0.6, 2)
            w, h = rng.uniform(0.12, 0.25, 2)
            parts.append(("blob", [(x, y), (x + w, y + h)], 0.0))
    return parts


def _sign(cls: int) -> list[tuple]:
    """Class `cls`'s sign: a palm shared with its pair class plus its own fingers."""
    return _strokes(10_000 + cls // 2, 2) + _strokes(20_000 + cls, 3)


def _tone(cls: int) -> np.ndarray:
    """The colour family of a class pair: hues spread around the colour wheel."""
    import colorsys
    hue = (cls // 2) / math.ceil(len(ASL_CLASSES) / 2)
    return np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.95)) * 255


def _pose(rng: np.random.Generator, spread: float):
    ang = rng.uniform(-spread, spread)
    scale = rng.uniform(0.8, 1.15)
    dx, dy = rng.uniform(-0.1, 0.1, 2)
    c, s = math.cos(ang) * scale, math.sin(ang) * scale

    def move(p):
        x, y = p[0] - 0.5, p[1] - 0.5
        return (c * x - s * y + 0.5 + dx, s * x + c * y + 0.5 + dy)
    return move, scale


def _draw_parts(draw: ImageDraw.ImageDraw, parts, rng, side: int, origin=(0, 0), span=None,
                colour=None, spread: float = 0.3) -> None:
    span = span or side
    move, scale = _pose(rng, spread)
    tone = colour if colour is not None else rng.uniform(90, 255, 3) * np.array([1.0, 0.8, 0.65])
    for kind, pts, width in parts:
        pts = [move((x + rng.normal(0, 0.02), y + rng.normal(0, 0.02))) for x, y in pts]
        xy = [(origin[0] + x * span, origin[1] + y * span) for x, y in pts]
        fill = tuple(int(v) for v in np.clip(tone + rng.normal(0, 12, 3), 0, 255))
        if kind == "line":
            draw.line(xy, fill=fill, width=max(2, int(width * scale * span)))
        else:
            box = [min(xy[0][0], xy[1][0]), min(xy[0][1], xy[1][1]),
                   max(xy[0][0], xy[1][0]), max(xy[0][1], xy[1][1])]
            draw.ellipse(box, fill=fill)


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 10, (img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def asl_folder(n: int = 1740, side: int = 128) -> Path:
    """The ASL-like class folder (generated once; reused when complete)."""
    folder = bench_root() / f"asl_signs-{n}-{side}"
    if (folder / "DONE").exists():
        return folder
    photos, rng = _backgrounds(), np.random.default_rng(0)
    for i in range(n):
        cls = i % len(ASL_CLASSES)
        img = _background(photos, rng, side)
        tone = _tone(cls) + rng.normal(0, 25, 3)
        _draw_parts(ImageDraw.Draw(img), _sign(cls), rng, side, colour=tone, spread=0.25)
        sub = folder / ASL_CLASSES[cls]
        sub.mkdir(parents=True, exist_ok=True)
        _finish(img, rng).save(sub / f"{i:05d}.jpg", quality=90)
    (folder / "DONE").write_text(str(n))
    return folder



def _hard_sign(cls: int, variant: int) -> list[tuple]:
    """A class of the hard set: a palm shared by four classes, two fingers of its own and a
    third drawn one of two ways (a sign made with either hand)."""
    return (_strokes(40_000 + cls // 4, 2) + _strokes(50_000 + cls, 2)
            + _strokes(70_000 + 2 * cls + variant, 1))


def _hard_tone(cls: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """A colour family per two classes, jittered widely: a hint, not an answer."""
    import colorsys
    hue = (cls // 2) / math.ceil(classes / 2) + rng.normal(0, 0.03)
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.4, 0.9), 0.95)) * 255


def _occlude(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    x, y = rng.uniform(0, side * 0.8, 2)
    w, h = rng.uniform(side * 0.12, side * 0.3, 2)
    draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))


HARD_CLASSES = 40


def hard_folder(n: int = 2400, side: int = 96, classes: int = HARD_CLASSES) -> Path:
    """The harder class folder (generated once; reused when complete)."""
    name = f"hard_signs-{n}-{side}" + (f"-{classes}c" if classes != HARD_CLASSES else "")
    folder = bench_root() / name
    if (folder / "DONE").exists():
        return folder
    photos, rng = _backgrounds(), np.random.default_rng(2)
    distractors = [_strokes(60_000 + k, 1) for k in range(64)]
    for i in range(n):
        cls = i % classes
        img = _background(photos, rng, side)
        draw = ImageDraw.Draw(img)
        _draw_parts(draw, distractors[int(rng.integers(len(distractors)))], rng, side,
                    spread=3.2)
        parts = _hard_sign(cls, int(rng.integers(2)))
        _draw_parts(draw, parts, rng, side, colour=_hard_tone(cls, classes, rng), spread=0.45)
        if rng.random() < 0.1:
            _occlude(draw, rng, side)
        sub = folder / f"c{cls:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        _finish(img, rng).save(sub / f"{i:05d}.jpg", quality=90)
    (folder / "DONE").write_text(str(n))
    return folder


def _label_probs() -> np.ndarray:
    """Steep power law: label 1 in about half the images, the last few in 1-3 %."""
    ranks = np.arange(1, len(MOSAIC_LABELS) + 1)
    return np.clip(0.55 * ranks ** -1.1, 0.012, None)


def _labels_of(rng: np.random.Generator, probs: np.ndarray) -> list[int]:
    present = [i for i, p in enumerate(probs) if rng.random() < p][:4]
    return present or [int(rng.choice(len(probs), p=probs / probs.sum()))]


def _caption(labels: list[int], rng: np.random.Generator) -> str:
    names = [_WORDS[i] for i in labels]
    text = ", ".join(names[:-1]) + (", and " if len(names) > 1 else "") + names[-1]
    where = ["in a street", "near a park, at dusk", "on a road", "by the water, in the rain"]
    return f"A photo of a {text} {where[int(rng.integers(len(where)))]}"


def mosaic_csv(n: int = 1800, side: int = 128) -> Path:
    """The multi-label folder: train.csv (ImageID,Labels,Caption) and data/<id>.jpg."""
    folder = bench_root() / f"mosaic_signs-{n}-{side}"
    if (folder / "DONE").exists():
        return folder
    (folder / "data").mkdir(parents=True, exist_ok=True)
    photos, rng, probs = _backgrounds(), np.random.default_rng(1), _label_probs()
    glyphs = [_strokes(30_000 + k, 4) for k in range(len(MOSAIC_LABELS))]
    rows = ["ImageID,Labels,Caption"]
    for i in range(n):
        labels = _labels_of(rng, probs)
        img = _background(photos, rng, side)
        draw, cells = ImageDraw.Draw(img), rng.permutation(4)
        for k, cell in zip(labels, cells):
            origin = ((cell % 2) * side / 2, (cell // 2) * side / 2)
            _draw_parts(draw, glyphs[k], rng, side, origin, side / 2, spread=0.4)
        _finish(img, rng).save(folder / "data" / f"{i}.jpg", quality=90)
        label_text = " ".join(MOSAIC_LABELS[k] for k in sorted(labels))
        rows.append(f"{i}.jpg,{label_text},{_caption(labels, rng)}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    (folder / "DONE").write_text(str(n))
    return folder


if __name__ == "__main__":
    print(asl_folder())
    print(hard_folder())
    print(mosaic_csv())
