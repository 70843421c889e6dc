"""Offline datasets made from scikit-learn's 1,797 real 8x8 handwritten digits.

Nothing is downloaded: ``sklearn.datasets.load_digits`` ships with scikit-learn.
Each dataset is written once under :func:`data_home`, atomically (built in a temp
folder next to the target, then renamed) and under a file lock, so concurrent
processes (e.g. DDP ranks) can all call :func:`materialize` safely.

Example:
    >>> root = materialize("digits")            # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['train', 'valid']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .cachedir import locked

__all__ = ["BUILTIN", "data_home", "describe", "materialize"]

BUILTIN = ("digits", "digits-multilabel")

# Bump when the generated files change, so stale caches are rebuilt.
FORMAT = 1
MARKER = ".easycls-complete.json"
VALID_FRACTION = 0.2
SEED = 0
SIZE = 32  # one digit, upscaled from 8x8 so timm backbones have room to downsample
MOSAIC_COUNTS = {"train": 3000, "valid": 600}
# PNG level 1 writes faster than the default 6 and is only slightly larger here
# (figures in docs/performance.md).
_PNG = {"compress_level": 1}

_DESCRIPTIONS = {
    "digits": (
        "digits: 1,797 real handwritten digits (scikit-learn), 32x32 PNGs in train/ and "
        "valid/ class folders 0-9, fixed stratified 80/20 split; single-label, offline."
    ),
    "digits-multilabel": (
        "digits-multilabel: 3,000 train / 600 valid 64x64 mosaics of 2-4 real digits, "
        "labels = the set of digits shown, Kaggle-style ImageID,Labels,Caption CSVs; offline."
    ),
}


def data_home() -> Path:
    """Folder holding the built-in datasets.

    Returns:
        ``$EASYCLS_DATA_HOME`` if set, else ``$XDG_CACHE_HOME/easycls/datasets``
        (``~/.cache`` when XDG_CACHE_HOME is unset).
    """
    if home := os.environ.get("EASYCLS_DATA_HOME"):
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "easycls" / "datasets"


def describe(name: str) -> str:
    """One-line description of a built-in dataset.

    Example:
        >>> describe("digits").split(":")[0]
        'digits'
    """
    _check_name(name)
    return _DESCRIPTIONS[name]


def materialize(name: str, root: str | os.PathLike | None = None) -> Path:
    """Write a built-in dataset to disk once and return its folder.

    Args:
        name: One of ``BUILTIN``.
        root: Parent folder; :func:`data_home` if None.

    Returns:
        ``root/name``, complete. ``digits`` holds ``train/<0-9>/<idx>.png`` and
        ``valid/<0-9>/<idx>.png``; ``digits-multilabel`` holds ``images/<id>.png``,
        ``train.csv`` and ``valid.csv``.

    Raises:
        ValueError: Unknown name.
        FileExistsError: ``root/name`` exists but was not made by easycls.

    Example:
        >>> path = materialize("digits-multilabel", root="/tmp/data")  # doctest: +SKIP
    """
    _check_name(name)
    root = Path(root).expanduser() if root is not None else data_home()
    target = root / name
    if _is_complete(target, name):
        return target  # the common case: no lock, no writes
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / f".{name}.lock", f"building the {name} dataset"):
        if not _is_complete(target, name):  # another process may have built it meanwhile
            _remove_leftovers(root, name)
            _publish(_build(name, root), target)
    return target


def _check_name(name: str) -> None:
    if name not in BUILTIN:
        raise ValueError(f"unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN)}")


def _is_complete(target: Path, name: str) -> bool:
    try:
        info = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return info.get("name") == name and info.get("format") == FORMAT


def _remove_leftovers(root: Path, name: str) -> None:
    """Delete temp folders of crashed builds; safe because we hold the lock."""
    for stale in root.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(name: str, root: Path) -> Path:
    """Build ``name`` in a fresh temp folder next to its target; marker written last."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        counts = _build_digits(tmp) if name == "digits" else _build_multilabel(tmp)
        info = {"name": name, "format": FORMAT, "counts": counts}
        (tmp / MARKER).write_text(json.dumps(info, indent=1))
        tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache should be readable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _publish(tmp: Path, target: Path) -> None:
    """Move the finished build into place, replacing a stale easycls build if any."""
    if target.exists():
        if not (target / MARKER).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(
                f"{target} exists but was not made by easycls; move it away or pass another root."
            )
        old = target.with_name(f".{target.name}.tmp-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


# --- content ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """All digits rendered to SIZE x SIZE uint8 gray (0..16 mapped to 0..255), and labels."""
    from sklearn.datasets import load_digits  # deferred: a slow import (docs/performance.md)

    data = load_digits()
    gray = np.rint(data.images * (255 / 16)).astype(np.uint8)
    big = [Image.fromarray(g).resize((SIZE, SIZE), Image.Resampling.BILINEAR) for g in gray]
    return np.stack([np.asarray(b) for b in big]), data.target.astype(int)


@lru_cache(maxsize=1)
def _split() -> dict[str, np.ndarray]:
    """The fixed stratified split of sample indices, sorted."""
    from sklearn.model_selection import train_test_split

    _, labels = _digits()
    train, valid = train_test_split(
        np.arange(len(labels)), test_size=VALID_FRACTION, stratify=labels, random_state=SEED
    )
    return {"train": np.sort(train), "valid": np.sort(valid)}


def _save_rgb(gray: np.ndarray, path: Path) -> None:
    # RGB because every timm backbone expects 3 channels; saves a convert per read.
    Image.fromarray(gray).convert("RGB").save(path, **_PNG)


def _build_digits(out: Path) -> dict[str, int]:
    images, labels = _digits()
    for split, indices in _split().items():
        for digit in range(10):
            (out / split / str(digit)).mkdir(parents=True)
        for i in indices:
            _save_rgb(images[i], out / split / str(labels[i]) / f"{i}.png")
    return {split: len(indices) for split, indices in _split().items()}


def _mosaic_plans(
    pool: np.ndarray, count: int, rng: np.random.Generator
) -> list[list[tuple[int, int]]]:
    """For each mosaic, (cell 0-3 in row-major order, sample index) pairs, cells ascending."""
    plans = []
    for _ in range(count):
        k = int(rng.integers(2, 5))
        cells = np.sort(rng.choice(4, size=k, replace=False))
        samples = rng.choice(pool, size=k, replace=False)  # distinct images, digits may repeat
        plans.append(list(zip(cells.tolist(), samples.tolist(), strict=True)))
    return plans


def _mosaic(plan: list[tuple[int, int]]) -> np.ndarray:
    images, _ = _digits()
    canvas = np.zeros((2 * SIZE, 2 * SIZE), np.uint8)  # empty cells stay black
    for cell, sample in plan:
        row, col = divmod(cell, 2)
        canvas[row * SIZE : (row + 1) * SIZE, col * SIZE : (col + 1) * SIZE] = images[sample]
    return canvas


def _csv_line(image_id: str, plan: list[tuple[int, int]]) -> str:
    _, labels = _digits()
    shown = [str(labels[s]) for _, s in plan]
    tags = " ".join(sorted(set(shown)))  # the set: a repeated digit is one label
    # Unquoted commas and quotes on purpose: the same shape as the course file that breaks
    # pandas, so every run of this dataset exercises the robust reader.
    caption = (
        f'hand-drawn digits {", ".join(shown)} in a "2x2" mosaic, '
        f'from samples {", ".join(str(s) for _, s in plan)}'
    )
    return f"{image_id},{tags},{caption}\n"


def _build_multilabel(out: Path) -> dict[str, int]:
    # Train mosaics use train-split digits only, valid mosaics valid-split ones: no leakage
    # between the two, and the same split as the single-label "digits".
    rng = np.random.default_rng(SEED)
    (out / "images").mkdir()
    next_id = 0
    for split, count in MOSAIC_COUNTS.items():
        lines = ["ImageID,Labels,Caption\n"]
        for plan in _mosaic_plans(_split()[split], count, rng):
            image_id = f"{next_id}.png"
            _save_rgb(_mosaic(plan), out / "images" / image_id)
            lines.append(_csv_line(image_id, plan))
            next_id += 1
        (out / f"{split}.csv").write_text("".join(lines), encoding="utf-8")
    return dict(MOSAIC_COUNTS)
