"""The exact bucketed sweep behind every threshold search: F1 at each distinct score
without sorting all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["F1Fn", "ScoredTargets", "bucket_tables", "f1_fn", "pick_best", "sweep_groups"]

_TIE_TOL = 1e-12  # F1 values closer than this are equal (sweeps accumulate rounding)
_PREFERRED = 0.5  # among equally good thresholds, the one closest to this wins


# ---------------------------------------------------------------------------- exact search
#
# F1 against a threshold is a step function that changes at every distinct score. Sorting all
# N = n*c scores gives an exact sweep but is slow at millions of cells, so the search first
# cuts the scores into at most 4096 buckets of similar size (a monotone map: equal scores share
# a bucket, a higher bucket holds only higher scores). Per-bucket sums (np.bincount) give the
# exact F1 at the lowest score of every bucket and an upper bound for the rest of it; only the
# buckets whose bound reaches the best exact value are swept score by score. Every candidate
# within the tie tolerance of the optimum lies in a swept bucket, so the result is exact.
#
# F1 of a group of cells (one class, or all cells for micro) is 2a / (k + positives) with
# a = true positives and k = predicted cells so far. Samples-F1 adds up row F1s, whose steps
# ("gains") come from a cheap sort within each row; macro-F1 adds up class F1s, swept per class
# and then merged at the shared thresholds.

F1Fn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def f1_fn(support: np.ndarray, scale: float = 1.0) -> F1Fn:
    """F1 of group g from its true positives a and predicted count k: 2a / (k + support[g])."""

    def f1(a: np.ndarray, k: np.ndarray, g: np.ndarray) -> np.ndarray:
        return scale * 2.0 * a / np.maximum(k + support[g], 1)  # denominator 0 only when a = 0

    return f1


@dataclass
class _Tables:
    """Per (group, bucket): sum of weights a and cell count k in the bucket and all above it."""

    cell: np.ndarray  # (N,) flat (group, bucket) index of every cell
    a_in: np.ndarray
    k_in: np.ndarray
    a_up: np.ndarray
    k_up: np.ndarray
    pos: np.ndarray  # sum of the positive weights in the bucket


def _above(table: np.ndarray) -> np.ndarray:
    """Sum over strictly higher buckets (last axis)."""
    out = np.zeros_like(table)
    out[:, :-1] = np.cumsum(table[:, :0:-1], axis=1)[:, ::-1]
    return out


def bucket_tables(bkt: np.ndarray, n_buckets: int, w: np.ndarray, n_groups: int) -> _Tables:
    size, shape = n_groups * n_buckets, (n_groups, n_buckets)
    cell = bkt
    if n_groups > 1:  # cell i is in column group i % n_groups
        cell = (bkt.reshape(-1, n_groups) + np.arange(0, size, n_buckets)).ravel()
    a_in = np.bincount(cell, w, size).reshape(shape)
    k_in = np.bincount(cell, minlength=size).reshape(shape)
    pos = a_in if w.min() >= 0 else np.bincount(cell, np.maximum(w, 0), size).reshape(shape)
    return _Tables(cell, a_in, k_in, _above(a_in), _above(k_in), pos)


def _n_buckets(n_cells: int, n_groups: int) -> int:
    # ~16 scores per bucket on small inputs, at most 4096 quantile buckets (heavy values add
    # at most twice that), and (classes x buckets) tables of the per-class search below ~4M
    return int(np.clip(min(n_cells // 16, (1 << 22) // n_groups), 4, 4096))


def _order_key(v: np.ndarray) -> np.ndarray:
    """Unsigned integers in the order of the floats; -0.0 and 0.0 get the same key."""
    bits = (v + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    if v.min() >= 0:
        return bits  # non-negative floats already sort like their bit patterns
    return np.where(bits >> 63 == 1, ~bits, bits | (1 << 63))


def _bucket_ids(v: np.ndarray, n_buckets: int) -> tuple[np.ndarray, int]:
    """Bucket of each score (nondecreasing in the score, about equally filled), and the count."""
    key = _order_key(v)
    lo, hi = int(key.min()), int(key.max())
    # a grid of <= 2^20 cells over the bit patterns resolves every octave, so scores crowded
    # near 0 (typical sigmoid outputs) still spread over many buckets
    shift = max(0, (hi - lo).bit_length() - min(20, v.size.bit_length() + 4))
    fine = key - lo
    fine >>= shift
    fine = fine.view(np.intp)  # small, so the same bits as a signed index
    sample = fine
    if fine.size > 1 << 16:  # quantiles of a fixed-seed sample are good enough
        sample = fine[np.random.default_rng(0).integers(0, fine.size, 1 << 16)]
    counts = np.bincount(sample, minlength=((hi - lo) >> shift) + 1)
    quantile = (np.cumsum(counts) - counts) * n_buckets // sample.size
    # a heavy grid cell (typically one value shared by many scores: a saturated 0.0 or 1.0,
    # a constant output) gets a bucket of its own, which then needs no sweep
    heavy = counts * n_buckets > sample.size
    starts = np.append(True, (quantile[1:] != quantile[:-1]) | heavy[1:] | heavy[:-1])
    lut = np.cumsum(starts) - 1
    return lut[fine], int(lut[-1]) + 1


@dataclass
class ScoredTargets:
    """Validated scores and targets, with the bucketing shared by the searches."""

    p: np.ndarray  # (n, c) float64 scores
    y: np.ndarray  # (n, c) bool targets

    @cached_property
    def hits(self) -> np.ndarray:
        return self.y.ravel().astype(np.float64)

    @cached_property
    def buckets(self) -> tuple[np.ndarray, int]:
        """Bucket id of every flattened score, and the number of buckets."""
        return _bucket_ids(self.p.ravel(), _n_buckets(self.p.size, self.p.shape[1]))

    @cached_property
    def class_tables(self) -> _Tables:
        bkt, n_buckets = self.buckets
        return bucket_tables(bkt, n_buckets, self.hits, self.p.shape[1])


def _run_cumsum(x: np.ndarray, run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Running sum and running count of x, restarting wherever run changes."""
    start = np.flatnonzero(np.append(True, run[1:] != run[:-1]))
    length = np.diff(np.append(start, len(run)))
    total = np.cumsum(x)
    before = np.repeat(np.append(0.0, total[start[1:] - 1]), length)
    return total - before, np.arange(len(run)) - np.repeat(start, length) + 1


Candidates = tuple[np.ndarray, np.ndarray, np.ndarray]  # (group, threshold, f1)


def _reaches(bound: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Buckets whose bound reaches their group's best exact F1, and the idle groups.

    A group is idle when even admitting all its cells scores 0 (it has no positives): every
    candidate then scores 0 and the tie rule alone decides, without a sweep (``_closest``).
    """
    best = exact.max(axis=-1, keepdims=True)
    idle = best <= 0
    return (bound >= best - _TIE_TOL) & ~idle, idle.ravel()


def _promising(
    t: _Tables, f: F1Fn, shared: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which buckets can hold a (near-)best candidate, flat over (group, bucket) or over
    buckets when shared; the exact F1 at each bucket's lowest score; the idle groups."""
    g = np.arange(len(t.a_in))[:, None]
    exact = f(t.a_up + t.a_in, t.k_up + t.k_in, g)  # a bucket's lowest score admits all of it
    if shared:  # classes share the threshold and their F1s add up; inside a bucket a class
        # admits at most all of its part (a <= a_up + pos) and at least none (k >= k_up)
        filled = t.k_in.sum(axis=0) > 0
        exact = np.where(filled, exact.sum(axis=0), -np.inf)
        bound = np.where(filled, f(t.a_up + t.pos, t.k_up, g).sum(axis=0), -np.inf)
    else:  # a threshold inside a bucket admits at most its positive part, at least one cell
        filled = t.k_in > 0
        exact = np.where(filled, exact, -np.inf)
        bound = np.where(filled, f(t.a_up + t.pos, t.k_up + 1, g), -np.inf)
    keep, idle = _reaches(bound, exact)
    return keep.ravel(), exact.ravel(), idle


def _closest(v: np.ndarray, groups: np.ndarray, n_groups: int) -> Candidates:
    """Each listed group's score closest to 0.5 (the larger of two equally close), F1 0."""
    cols = v.reshape(-1, n_groups)[:, groups]
    dist = np.abs(cols - _PREFERRED)
    closest = np.where(dist == dist.min(axis=0), cols, -np.inf).max(axis=0)
    return groups, closest, np.zeros(len(groups))


def _single_valued(
    cells: np.ndarray, v: np.ndarray, run: np.ndarray, exact: np.ndarray, n_buckets: int
) -> tuple[np.ndarray, Candidates]:
    """Split off the buckets whose cells share one score: its exact F1 is already known."""
    vs, rid = v[cells], run[cells]
    lo, hi = np.full(exact.size, np.inf), np.full(exact.size, -np.inf)
    np.minimum.at(lo, rid, vs)
    np.maximum.at(hi, rid, vs)
    single = np.flatnonzero(lo == hi)
    return cells[lo[rid] != hi[rid]], (single // n_buckets, lo[single], exact[single])


def sweep_groups(
    v: np.ndarray, bkt: np.ndarray, t: _Tables, w: np.ndarray, f: F1Fn,
    n_groups: int = 1, shared: bool = False, how: str = "best",
) -> Candidates:
    """Exact F1 of every candidate threshold that can be (near-)best, per threshold group.

    Args:
        v: (N,) flattened (n, c) scores; cell i is in group i % n_groups (1 or c groups).
        bkt: (N,) bucket ids, see ``_bucket_ids``.
        t: tables of ``w`` over (group, bucket).
        w: (N,) what a cell adds to its group's ``a`` once predicted: a hit, or an F1 gain.
        f: F1 from a group's ``a``, its predicted count ``k`` and the group id. It must grow
            with ``a`` and not grow with ``k``: that makes the bucket bounds valid.
        n_groups: 1, or c for the class columns.
        shared: one threshold for all groups, scoring the sum of their F1s (macro);
            otherwise one threshold per group.
        how: "best" sweeps only what can be (near-)best; "all" sweeps every score (the full
            curve); "buckets" adds the exact point at every bucket's lowest score to "best".

    Returns:
        (group, threshold, f1) of the candidates; with "all" sorted by group, then
        thresholds decreasing.
    """
    if how == "all":
        return _sweep_cells(np.arange(v.size), v, bkt, t, w, f, n_groups, shared)
    keep, exact, idle = _promising(t, f, shared)
    run = bkt if shared else t.cell  # bucket of each cell, flat over (group, bucket)
    n_buckets = t.a_in.shape[1]
    cells, single = _single_valued(np.flatnonzero(keep[run]), v, run, exact, n_buckets)
    found = [single, _closest(v, np.flatnonzero(idle), 1 if shared else n_groups),
             _sweep_cells(cells, v, bkt, t, w, f, n_groups, shared)]
    if how == "buckets":
        found.append(_bucket_points(v, run, exact, n_buckets))
    return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))


def _bucket_points(v: np.ndarray, run: np.ndarray, exact: np.ndarray, n_buckets: int) -> Candidates:
    """The exact F1 at the lowest score of every bucket: a coarse but exact curve."""
    lo = np.full(exact.size, np.inf)
    np.minimum.at(lo, run, v)
    filled = np.flatnonzero(exact > -np.inf)
    return filled // n_buckets, lo[filled], exact[filled]


def _sweep_cells(
    cells: np.ndarray, v: np.ndarray, bkt: np.ndarray, t: _Tables, w: np.ndarray, f: F1Fn,
    n_groups: int, shared: bool,
) -> Candidates:
    """The exact sweep over the given cells; see ``sweep_groups``."""
    if cells.size == 0:
        return np.zeros(0, np.intp), np.zeros(0), np.zeros(0)
    groups, vs = cells % n_groups, v[cells]
    order = np.lexsort((-vs, groups)) if n_groups > 1 else np.argsort(-vs, kind="stable")
    cells, groups, vs, run = cells[order], groups[order], vs[order], t.cell[cells[order]]
    a, k = _run_cumsum(w[cells], run)
    f1 = f(a + t.a_up.ravel()[run], k + t.k_up.ravel()[run], groups)
    if shared:
        groups, vs, f1 = _merge_groups(f1, cells, groups, vs, run, t, f, bkt)
    last = np.append((vs[1:] != vs[:-1]) | (groups[1:] != groups[:-1]), True)
    return groups[last], vs[last], f1[last]


def _merge_groups(
    f1: np.ndarray, cells: np.ndarray, groups: np.ndarray, vs: np.ndarray, run: np.ndarray,
    t: _Tables, f: F1Fn, bkt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From each group's running F1 to the sum over groups, cells in decreasing score."""
    first = np.append(True, run[1:] != run[:-1])
    before = np.append(0.0, f1[:-1])  # the group's F1 just before this cell entered
    before[first] = f(t.a_up.ravel()[run[first]], t.k_up.ravel()[run[first]], groups[first])
    order = np.argsort(-vs, kind="stable")
    b = bkt[cells[order]]
    g = np.arange(len(t.a_in))[:, None]
    base = f(t.a_up, t.k_up, g).sum(axis=0)  # summed F1 with all buckets above b admitted
    gained, _ = _run_cumsum((f1 - before)[order], b)
    return np.zeros(len(b), np.intp), vs[order], base[b] + gained


def pick_best(groups: np.ndarray, thresholds: np.ndarray, f1: np.ndarray,
              n_groups: int) -> np.ndarray:
    """Index of each group's chosen candidate, by the tie rule in the module docstring."""
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, groups, f1)
    near = f1 >= best[groups] - _TIE_TOL
    dist = np.where(near, np.abs(thresholds - _PREFERRED), np.inf)
    order = np.lexsort((-thresholds, dist, groups))
    return order[np.searchsorted(groups[order], np.arange(n_groups))]
