"""Generated datasets with planted problems, to measure what `easycls check` finds.

`planted_folder` writes class folders of structured images (each class its own hue, each
image its own random shapes) where a share of the images have a re-encoded, resized or
cropped copy in the same class, and a share are filed under a wrong class; `planted.json`
beside them lists what was planted. `group_folder` writes images that come in groups of
near-identical frames (like the frames of one video), for judging a split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["planted_folder", "group_folder", "shapes_image"]


def _hue(ci: int) -> np.ndarray:
    return np.array([(ci * 97) % 256, (ci * 57 + 80) % 256, (ci * 31 + 160) % 256], float)


def shapes_image(ci: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Random shapes in shades of class `ci`'s hue over a shaded background."""
    hue = _hue(ci)
    ramp = np.linspace(rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.1), size)
    ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    base = np.clip(hue * ramp[..., None] * np.ones((size, size, 1)), 0, 255)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 9)):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 6, size // 2, 2)
        fill = tuple(int(v) for v in np.clip(hue * rng.uniform(0.2, 1.4), 0, 255))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, float) + noise, 0, 255).astype(np.uint8))


def _copy(img: Image.Image, kind: str, rng: np.random.Generator, path: Path) -> Path:
    """A near-duplicate of `img`: re-encoded as JPEG, resized by 0.8-1.25, or cropped by
    1-4 % of each side."""
    w, h = img.size
    if kind == "resize":
        f = rng.uniform(0.8, 1.25)
        img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BICUBIC)
    elif kind == "crop":
        cut = (rng.uniform(0.01, 0.04, 4) * [w, h, w, h]).round().astype(int)
        img = img.crop((cut[0], cut[1], w - cut[2], h - cut[3]))
    if kind == "jpeg":
        path = path.with_suffix(".jpg")
        img.save(path, quality=int(rng.integers(60, 90)))
    else:
        img.save(path)
    return path


def planted_folder(root: str | Path, n_classes: int = 5, per_class: int = 40,
                   dup_frac: float = 0.05, wrong_frac: float = 0.02, size: int = 64,
                   seed: int = 0) -> dict:
    """Write `root/<class>/<i>.png` with planted duplicates and wrong labels.

    Returns:
        what was planted (also written to `root/planted.json`): `duplicates`, pairs of
        paths relative to `root`; `wrong_labels`, {path, given, true} rows.

    Example:
        >>> planted = planted_folder("planted", n_classes=10, per_class=200)
    """
    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"class{c}" for c in range(n_classes)]
    n = n_classes * per_class
    picks = rng.permutation(n)
    dup_src = set(picks[: round(n * dup_frac)].tolist())
    wrong = set(picks[round(n * dup_frac): round(n * dup_frac) + round(n * wrong_frac)].tolist())
    planted = {"duplicates": [], "wrong_labels": []}
    for idx in range(n):
        ci, i = divmod(idx, per_class)
        given = (ci + int(rng.integers(1, n_classes))) % n_classes if idx in wrong else ci
        (root / names[given]).mkdir(parents=True, exist_ok=True)
        img, path = shapes_image(ci, rng, size), root / names[given] / f"{i:05d}_{ci}.png"
        img.save(path)
        if idx in wrong:
            planted["wrong_labels"].append(dict(path=_rel(path, root), given=names[given],
                                                true=names[ci]))
        if idx in dup_src:
            kind = ("jpeg", "resize", "crop")[len(planted["duplicates"]) % 3]
            copy = _copy(img, kind, rng, path.with_name(f"{i:05d}_{ci}_copy.png"))
            planted["duplicates"].append([_rel(path, root), _rel(copy, root)])
    (root / "planted.json").write_text(json.dumps(planted, indent=1))
    return planted


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def group_folder(root: str | Path, n_classes: int = 4, groups_per_class: int = 20,
                 per_group: int = 10, size: int = 48, seed: int = 0) -> Path:
    """Write `root/<class>/g<class>_<group>_<frame>.png`: groups of near-identical frames.

    Each group is one scene (random shapes in a random hue) seen in `per_group` frames that
    differ by a small shift and noise; the class is only a small square of the class's hue
    somewhere in the scene. A model can tell a scene it has seen far more easily than it
    learns the class, which is what makes a random split of such data overstate.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    for ci in range(n_classes):
        (root / f"class{ci}").mkdir(parents=True, exist_ok=True)
        for g in range(groups_per_class):
            scene = np.asarray(shapes_image(int(rng.integers(n_classes, 10_000)), rng,
                                            size + 8), float)
            x, y = rng.integers(4, size - 8, 2)
            scene[y: y + 8, x: x + 8] = _hue(ci)
            for f in range(per_group):
                dx, dy = rng.integers(0, 9, 2)
                frame = scene[dy: dy + size, dx: dx + size] + rng.normal(0, 8, (size, size, 3))
                Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(
                    root / f"class{ci}" / f"g{ci}_{g:03d}_{f:02d}.png")
    return root
