"""Near-duplicates that a perceptual hash misses: shifted, cropped or re-lit frames.

Frames of one video or one burst differ by a small shift, a crop, noise or exposure. A shift
of a tenth of the picture moves most of pHash's bits, so those pairs are found another way:
each image's nearest neighbours by its 4x4 colour cells (a brute-force cosine search,
chunked so memory stays bounded) are candidates, and a candidate counts when the two grey
32x32 images line up: their fine detail (the image less its local mean) correlates at
`MIN_DETAIL` or more at the best shift within `MAX_SHIFT` pixels, found by one FFT
cross-correlation, and the whole pixels of the overlap then correlate at `MIN_ALIGNED` or
more. Detail alone matches pictures that share one sharp object; the whole pixels alone
match pictures that share only a smooth background; both together are the same scene, when
the two also agree in colour (the grey images cannot tell a picture from its recoloured
copy): their mean colours' shares of red, green and blue differ by `MAX_CHROMA_DIFF` at most,
which a change of exposure leaves alone.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["NEIGHBOURS", "MIN_DETAIL", "MIN_ALIGNED", "MAX_SHIFT", "MAX_CHROMA_DIFF",
           "neighbour_pairs", "aligned_scores", "chroma_difference", "shifted_pairs"]

NEIGHBOURS = 8      # candidates per image
MIN_DETAIL = 0.6    # detail correlation at the best shift
MIN_ALIGNED = 0.95  # whole-pixel correlation of the aligned overlap
MAX_SHIFT = 5       # pixels of the 32x32 grey image, about 15 % of a side
MAX_CHROMA_DIFF = 0.05  # difference of the shares of red, green and blue in the mean colour
_PAD = 40           # FFT size: 32 px plus the largest shift, so lags do not wrap
_QUERIES = 1024     # query rows per similarity block: bounds its memory
_PAIRS = 8192       # pairs per FFT block


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def neighbour_pairs(features: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """(i, j) pairs, i < j, each once: j among i's `k` most similar rows (centred cosine)."""
    n = len(features)
    k = min(k, n - 1)
    if k < 1:
        return np.empty((0, 2), np.int64)
    x = torch.from_numpy(_unit(features))
    found = []
    for start in range(0, n, _QUERIES):
        sims = x[start:start + _QUERIES] @ x.T
        rows = torch.arange(start, min(n, start + _QUERIES))
        sims[rows - start, rows] = -2.0  # not itself
        j = sims.topk(k, dim=1).indices.numpy()
        i = np.repeat(rows.numpy(), k)
        found.append(np.stack([np.minimum(i, j.ravel()), np.maximum(i, j.ravel())], 1))
    return np.unique(np.concatenate(found), axis=0)


def _detail(grey: np.ndarray) -> np.ndarray:
    """The image less its 5x5 local mean, scaled to unit norm."""
    g = torch.from_numpy(grey.astype(np.float32))[:, None]
    local = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(g, (2, 2, 2, 2), "replicate"),
                                           5, stride=1)
    return _unit((g - local)[:, 0].numpy()).reshape(grey.shape)


def _shifts() -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into the FFT lag grid of every shift within `MAX_SHIFT`, and the shifts."""
    r = np.arange(-MAX_SHIFT, MAX_SHIFT + 1)
    dy, dx = (a.ravel() for a in np.meshgrid(r, r, indexing="ij"))
    return (dy % _PAD) * _PAD + dx % _PAD, np.stack([dy, dx], 1)


def _overlap_correlation(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Pearson correlation of `a` moved by (dy, dx) against `b`, over their overlap."""
    n = a.shape[-1]
    a = a[:, max(0, dy):n + min(0, dy), max(0, dx):n + min(0, dx)].reshape(len(a), -1)
    b = b[:, max(0, -dy):n + min(0, -dy), max(0, -dx):n + min(0, -dx)].reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    norm = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return (a * b).sum(1) / np.maximum(norm, 1e-6)


def aligned_scores(grey: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(detail correlation at the best shift, whole-pixel correlation there) per pair."""
    lags, shifts = _shifts()
    detail, aligned = np.zeros(len(pairs)), np.zeros(len(pairs))
    for s in range(0, len(pairs), _PAIRS):
        p = pairs[s:s + _PAIRS]
        fa, fb = (np.fft.rfft2(_detail(grey[p[:, c]]), s=(_PAD, _PAD)) for c in (0, 1))
        cross = np.fft.irfft2(fa * np.conj(fb), s=(_PAD, _PAD)).reshape(len(p), -1)[:, lags]
        best = cross.argmax(1)
        detail[s:s + len(p)] = cross[np.arange(len(p)), best]
        g = grey[p[:, 0]].astype(np.float32), grey[p[:, 1]].astype(np.float32)
        for at in np.unique(best):
            sel = np.flatnonzero(best == at)
            aligned[s + sel] = _overlap_correlation(g[0][sel], g[1][sel], *shifts[at])
    return detail, aligned


def chroma_difference(colours: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Largest difference of the red, green and blue shares of two images' mean colours."""
    mean = colours.reshape(len(colours), -1, 3).mean(1)
    share = (mean + 10) / (mean.sum(1, keepdims=True) + 30)  # dark images: no wild ratios
    return np.abs(share[pairs[:, 0]] - share[pairs[:, 1]]).max(1)


def shifted_pairs(grey: np.ndarray, colours: np.ndarray, rows: np.ndarray,
                  min_detail: float = MIN_DETAIL, min_aligned: float = MIN_ALIGNED
                  ) -> np.ndarray:
    """(i, j) pairs among `rows` (indices into `grey`) of the same scene seen slightly moved.

    Args:
        grey: N x 32 x 32 grey images.
        colours: N x 4 x 4 x 3 colour cell means, the search features.
        rows: the indices to search among (the readable images).
        min_detail, min_aligned: the correlations a pair needs (see the module's doc).
    """
    pairs = rows[neighbour_pairs(colours[rows])]
    pairs = pairs[chroma_difference(colours, pairs) <= MAX_CHROMA_DIFF]
    if len(pairs) == 0:
        return pairs
    detail, aligned = aligned_scores(grey, pairs)
    return pairs[(detail >= min_detail) & (aligned >= min_aligned)]
