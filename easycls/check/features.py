"""Cheap image features from what a scan already decoded: colour layout, grey layout and
edge directions, for the out-of-fold linear model of `labels`.

No second decode and no training: each image's 4x4 colour cells, its 16x16 grey thumbnail
and a histogram of gradient orientations over a 4x4 grid of its 32x32 grey image (in the
manner of HOG). The grey parts are centred and scaled to unit norm (contrast and brightness
vary between photos of one class); the colour cells keep their level.
"""

from __future__ import annotations

import numpy as np

from .hashing import Scan

__all__ = ["image_features", "ORIENTATIONS"]

ORIENTATIONS = 8  # gradient direction bins over the full circle
_GRID = 4         # cells a side for the orientation histograms


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _orientations(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude summed by direction bin in each cell of a 4x4 grid."""
    g = grey.astype(np.float32)
    gy, gx = np.gradient(g, axis=(1, 2))
    mag = np.hypot(gx, gy)
    bins = ((np.arctan2(gy, gx) + np.pi) / (2 * np.pi) * ORIENTATIONS).astype(int)
    bins = np.minimum(bins, ORIENTATIONS - 1)
    n, side = len(g), g.shape[1]
    cell = (np.arange(side) * _GRID // side)
    cells = cell[:, None] * _GRID + cell[None, :]  # cell index of each pixel
    index = (cells[None] * ORIENTATIONS + bins) + (np.arange(n) * _GRID**2 * ORIENTATIONS
                                                   )[:, None, None]
    hist = np.bincount(index.ravel(), mag.ravel(), minlength=n * _GRID**2 * ORIENTATIONS)
    return np.sqrt(hist.reshape(n, -1))  # square root: a few strong edges do not dominate


def image_features(scan: Scan, rows: np.ndarray) -> np.ndarray:
    """A feature row per image in `rows` (indices into the scan), float32.

    Example:
        >>> x = image_features(scan(refs), np.arange(len(refs)))
    """
    colours = scan.colours[rows].reshape(len(rows), -1).astype(np.float32) / 255
    parts = [_unit_rows(scan.thumbs[rows]), _unit_rows(_orientations(scan.grey[rows]))]
    return np.concatenate([colours] + parts, axis=1)
