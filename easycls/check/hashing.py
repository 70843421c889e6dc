"""One small decode per image: its perceptual hash and the facts a check reports.

The hash is the DCT perceptual hash (pHash) of `imagehash`, computed with two small matrix
products instead of scipy's transform: the same 64 bits (tests compare them with
`imagehash.phash`) at less than half the cost per image. Images are decoded through
`data.images.open_image`, so an odd file behaves exactly as it does in `fit`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.images import UnreadableImage, open_image, parallel_map

__all__ = ["HASH_SIDE", "Scan", "colour_difference", "correlation", "phash", "phash_bits", "scan"]

HASH_SIDE = 32  # pHash: 32x32 grey, its 8x8 lowest DCT frequencies
_LOW = 8
_THUMB = 16
_CELLS = 4
_k = np.arange(HASH_SIDE)
# DCT-II basis (scipy.fftpack's, up to a factor that the median comparison ignores).
_DCT = np.cos(np.pi * np.outer(_k[:_LOW], 2 * _k + 1) / (2 * HASH_SIDE))


@dataclass
class Scan:
    """What one pass over the images found, index-aligned with the references.

    Attributes:
        hashes: 64-bit pHash per image (0 where unreadable).
        digests: 64-bit digest of the 32x32 grey thumbnail: equal for identical pixels.
        sizes: (width, height) as decoded; JPEGs decode reduced, keeping each side >= 32
            and the aspect ratio, so small sides are exact.
        contrast: standard deviation of the grey thumbnail (0 for a blank image).
        thumbs: 16x16 grey thumbnails, to confirm that two close hashes are close images.
        grey: the 32x32 grey images the hashes come from, to line up shifted frames.
        colours: 4x4 RGB cell means: the hash and the thumbnails are grey, and two pictures
            that differ only in colour are not copies.
        unreadable: {index: reason} for images that cannot be decoded.
    """

    hashes: np.ndarray
    digests: np.ndarray
    sizes: np.ndarray
    contrast: np.ndarray
    thumbs: np.ndarray
    colours: np.ndarray
    unreadable: dict[int, str]
    grey: np.ndarray | None = None

    @property
    def readable(self) -> np.ndarray:
        ok = np.ones(len(self.hashes), dtype=bool)
        ok[list(self.unreadable)] = False
        return ok


def phash_bits(grey: np.ndarray) -> int:
    """The 64-bit pHash of a 32x32 grey array, as `imagehash.phash` computes it."""
    low = _DCT @ grey.astype(np.float64) @ _DCT.T
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((HASH_SIDE, HASH_SIDE),
                                              Image.Resampling.LANCZOS), dtype=np.uint8)


def phash(img: Image.Image) -> int:
    """The 64-bit perceptual hash of a PIL image."""
    return phash_bits(_grey(img))


def correlation(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Pearson correlation of the thumbnails of each (i, j) pair: 1 for the same picture.

    Two unrelated images can share a coarse layout, hence a close hash; their pixels still
    differ, which this measures at a scale where re-encoding and small crops do not.
    """
    if len(pairs) == 0:
        return np.zeros(0)
    a, b = (thumbs[pairs[:, c]].reshape(len(pairs), -1).astype(np.float32) for c in (0, 1))
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    # Two flat images (no variation to compare) count as the same picture when equal in tone.
    flat = np.where(np.abs(a - b).max(1) < 8, 1.0, 0.0)
    return np.where(norm > 0, (a * b).sum(1) / np.maximum(norm, 1e-9), flat)


def colour_difference(colours: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Mean absolute difference of the 4x4 RGB cell means of each (i, j) pair (0..255)."""
    if len(pairs) == 0:
        return np.zeros(0)
    a, b = (colours[pairs[:, c]].astype(np.float32) for c in (0, 1))
    return np.abs(a - b).reshape(len(pairs), -1).mean(1)


def _scan_one(ref: str) -> tuple | str:
    try:
        img = open_image(ref, draft=HASH_SIDE)
    except UnreadableImage as e:
        return e.reason
    grey = _grey(img)
    digest = int.from_bytes(hashlib.blake2b(grey.tobytes(), digest_size=8).digest(), "big")
    thumb = np.asarray(Image.fromarray(grey).resize((_THUMB, _THUMB), Image.Resampling.BOX))
    colour = np.asarray(img.resize((_CELLS, _CELLS), Image.Resampling.BOX))
    return (phash_bits(grey), digest, img.size[0], img.size[1], float(grey.std()), thumb, colour,
            grey)


def scan(refs: Sequence[str], workers: int | None = None, progress: bool = False) -> Scan:
    """Decode every image small, on a thread per core, and hash it.

    Example:
        >>> s = scan(["a.jpg", "b.png"])
        >>> hex(int(s.hashes[0]))
    """
    n = len(refs)
    hashes, digests = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    sizes, contrast, bad = np.zeros((n, 2), np.int64), np.zeros(n), {}
    thumbs = np.zeros((n, _THUMB, _THUMB), np.uint8)
    colours = np.zeros((n, _CELLS, _CELLS, 3), np.uint8)
    greys = np.zeros((n, HASH_SIDE, HASH_SIDE), np.uint8)
    for i, got in enumerate(parallel_map(_scan_one, refs, workers, progress)):
        if isinstance(got, str):
            bad[i] = got
            continue
        (hashes[i], digests[i], sizes[i, 0], sizes[i, 1], contrast[i], thumbs[i], colours[i],
         greys[i]) = got
    return Scan(hashes, digests, sizes, contrast, thumbs, colours, bad, greys)
