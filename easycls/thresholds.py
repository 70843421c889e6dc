"""F1-optimal decision thresholds for multi-label classification.

Plain numpy and torch, no fastai: inputs may be torch tensors or numpy arrays and are
converted to float64 scores and boolean targets.

Conventions shared by every function here:

* A label is predicted iff ``score >= threshold``.
* F1 is ``2 TP / (2 TP + FP + FN)`` and 0 where that is 0/0, which is exactly scikit-learn's
  ``f1_score(..., zero_division=0)``: ``"samples"`` averages per-row F1 (a row with no true and
  no predicted labels scores 0), ``"micro"`` pools the counts of all cells, ``"macro"`` averages
  per-class F1 over all classes (a class without positives scores 0).
* Searches are exact. The candidates are every distinct score (predicting ``>=`` it) plus
  "predict nothing", reported as the threshold just above the largest score
  (``np.nextafter(max, inf)``). Equal scores can't be separated, so they enter together.
* Ties: every candidate whose F1 is within ``1e-12`` of the best counts as best; of those the
  threshold closest to 0.5 wins, and of two equally close the larger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

__all__ = [
    "AVERAGES",
    "apply_thresholds",
    "best_class_thresholds",
    "best_global_threshold",
    "f1_curve",
    "f1_scores",
    "per_class_report",
    "tune_thresholds",
]

AVERAGES = ("samples", "micro", "macro")
_TIE_TOL = 1e-12  # F1 values closer than this are equal (sweeps accumulate rounding)
_PREFERRED = 0.5  # among equally good thresholds, the one closest to this wins


# ---------------------------------------------------------------------------- inputs


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_scores(probs: Any) -> np.ndarray:
    p = np.ascontiguousarray(_to_numpy(probs), dtype=np.float64)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"probs must be a non-empty (n, c) array, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    return p


def _as_targets(targets: Any, shape: tuple[int, ...]) -> np.ndarray:
    t = _to_numpy(targets)
    if t.shape != shape:
        raise ValueError(f"targets shape {t.shape} does not match probs shape {shape}")
    if t.dtype != np.bool_:
        if not np.isin(t, (0, 1)).all():
            raise ValueError("targets must be 0/1 (or boolean)")
        t = t != 0
    return np.ascontiguousarray(t)


def _prepare(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_scores(probs)
    return p, _as_targets(targets, p.shape)


def _as_thresholds(thresholds: Any, c: int) -> np.ndarray:
    t = np.asarray(_to_numpy(thresholds), dtype=np.float64)
    if t.ndim == 0:
        return np.full(c, float(t))
    if t.shape != (c,):
        raise ValueError(f"thresholds must be a float or shape ({c},), got shape {t.shape}")
    return t


def _check_average(average: str) -> None:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


# ---------------------------------------------------------------------------- scoring


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 = 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _f1_of_preds(pred: np.ndarray, y: np.ndarray, average: str) -> float:
    # samples: one F1 per row; macro: one per class; micro: one over all cells
    axis = {"samples": 1, "macro": 0, "micro": None}[average]
    tp = np.count_nonzero(pred & y, axis=axis)
    den = np.count_nonzero(pred, axis=axis) + np.count_nonzero(y, axis=axis)
    return float(np.mean(_ratio(2 * tp, den)))


def apply_thresholds(probs: Any, thresholds: Any, at_least_one: bool = False) -> np.ndarray:
    """Turn scores into decisions.

    Args:
        probs: (n, c) scores.
        thresholds: one float or (c,) per-class thresholds; positive iff ``score >= threshold``.
        at_least_one: a row where nothing passes gets its argmax label.

    Returns:
        (n, c) boolean predictions.
    """
    return _apply(_as_scores(probs), thresholds, at_least_one)


def _apply(p: np.ndarray, thresholds: Any, at_least_one: bool) -> np.ndarray:
    pred = p >= _as_thresholds(thresholds, p.shape[1])
    if at_least_one:
        empty = ~pred.any(axis=1)
        pred[empty, p[empty].argmax(axis=1)] = True
    return pred


def f1_scores(
    probs: Any, targets: Any, thresholds: Any, average: str = "samples", *,
    at_least_one: bool = False,
) -> float:
    """F1 of thresholded scores, matching ``sklearn.metrics.f1_score(zero_division=0)``.

    Args:
        probs: (n, c) scores.
        targets: (n, c) 0/1 labels.
        thresholds: one float or (c,) per-class thresholds.
        average: "samples", "micro" or "macro".
        at_least_one: score the predictions of ``apply_thresholds(..., at_least_one=True)``.

    Example:
        >>> f1_scores([[0.9, 0.2]], [[1, 0]], 0.5)
        1.0
    """
    _check_average(average)
    p, y = _prepare(probs, targets)
    return _f1_of_preds(_apply(p, thresholds, at_least_one), y, average)


# ---------------------------------------------------------------------------- exact search
#
# F1 against a threshold is a step function that changes at every distinct score. Sorting all
# N = n*c scores gives an exact sweep but takes about a second at N = 5e6, so the search first
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


def _f1_fn(support: np.ndarray, scale: float = 1.0) -> F1Fn:
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


def _tables(bkt: np.ndarray, n_buckets: int, w: np.ndarray, n_groups: int) -> _Tables:
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
class _ScoredTargets:
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
        return _tables(bkt, n_buckets, self.hits, self.p.shape[1])


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


def _sweep(
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
    """The exact sweep over the given cells; see ``_sweep``."""
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


def _pick(groups: np.ndarray, thresholds: np.ndarray, f1: np.ndarray, n_groups: int) -> np.ndarray:
    """Index of each group's chosen candidate, by the tie rule in the module docstring."""
    best = np.full(n_groups, -np.inf)
    np.maximum.at(best, groups, f1)
    near = f1 >= best[groups] - _TIE_TOL
    dist = np.where(near, np.abs(thresholds - _PREFERRED), np.inf)
    order = np.lexsort((-thresholds, dist, groups))
    return order[np.searchsorted(groups[order], np.arange(n_groups))]


# ---------------------------------------------------------------------------- global threshold


def _group_gains(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Change of its row's F1 as each cell turns positive, cells entering a row by score.

    A row's F1 once its k highest cells are predicted is 2 tp_k / (k + positives); a cell's
    gain is the step it causes. Cells tied within a row enter in any order: only a tie's total
    matters, and thresholds can't split a tie.
    """
    n, c = p.shape
    order = np.argsort(p, axis=1)[:, ::-1]  # decreasing; the order within ties is irrelevant
    flat = (order + np.arange(0, n * c, c)[:, None]).ravel()
    tp = np.cumsum(y.ravel()[flat].reshape(n, c), axis=1)
    f1 = 2.0 * tp / (np.arange(1, c + 1) + tp[:, -1:])
    f1[:, 1:] -= f1[:, :-1].copy()  # the step each cell causes
    gains = np.empty(n * c)
    gains[flat] = f1.ravel()
    return gains.reshape(n, c)


def _global_sweep(
    d: _ScoredTargets, v: np.ndarray, bkt: np.ndarray, n_buckets: int, average: str, how: str
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, f1) of the global candidates, thresholds decreasing."""
    n, c = d.p.shape
    if average == "samples":  # mean of row F1s: add up the rows' gains
        w = _group_gains(v.reshape(n, c), d.y).ravel()
        args = (_tables(bkt, n_buckets, w, 1), w, lambda a, k, g: a / n, 1, False)
    elif average == "micro":
        support = np.array([np.count_nonzero(d.y)])
        args = (_tables(bkt, n_buckets, d.hits, 1), d.hits, _f1_fn(support), 1, False)
    else:  # mean of class F1s
        unchanged = bkt is d.buckets[0]  # else at_least_one moved the row maxima up
        t = d.class_tables if unchanged else _tables(bkt, n_buckets, d.hits, c)
        args = (t, d.hits, _f1_fn(np.count_nonzero(d.y, axis=0), 1.0 / c), c, True)
    _, thresholds, f1 = _sweep(v, bkt, *args, how=how)
    return thresholds, f1


def _global_candidates(
    d: _ScoredTargets, average: str, at_least_one: bool, how: str = "best"
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, f1) of global candidates, thresholds decreasing, "nothing" included."""
    (n, c), (bkt, n_buckets) = d.p.shape, d.buckets
    v = d.p.ravel()
    above = np.nextafter(d.p.max(), np.inf)
    if not at_least_one:
        thresholds, f1 = _global_sweep(d, v, bkt, n_buckets, average, how)
        return np.append(above, thresholds), np.append(0.0, f1)
    # a global threshold predicts a row's argmax whenever anything in the row passes, and
    # at_least_one adds it when nothing does: exactly plain thresholding with argmax = +inf
    top = d.p.argmax(axis=1) + np.arange(0, n * c, c)
    v, bkt = v.copy(), bkt.copy()
    v[top], bkt[top] = np.inf, n_buckets
    thresholds, f1 = _global_sweep(d, v, bkt, n_buckets + 1, average, how)
    thresholds[np.isinf(thresholds)] = above  # nothing is never predicted; top-1 takes its place
    return thresholds, f1


def _best_global(d: _ScoredTargets, average: str, at_least_one: bool) -> tuple[float, float]:
    thresholds, f1 = _global_candidates(d, average, at_least_one)
    t = float(thresholds[_pick(np.zeros(len(f1), np.intp), thresholds, f1, 1)[0]])
    return t, _f1_of_preds(_apply(d.p, t, at_least_one), d.y, average)


def best_global_threshold(
    probs: Any, targets: Any, average: str = "samples", *, at_least_one: bool = False
) -> tuple[float, float]:
    """Exact F1-maximizing single threshold.

    Args:
        probs: (n, c) scores.
        targets: (n, c) 0/1 labels.
        average: "samples", "micro" or "macro".
        at_least_one: optimize the F1 of ``apply_thresholds(..., at_least_one=True)``. Row
            maxima are then always predicted, so they are no candidates of their own.

    Returns:
        (threshold, f1): ``probs >= threshold`` reproduces the optimum; f1 is recomputed from
        those decisions, so it equals ``f1_scores(probs, targets, threshold, average)``.

    Example:
        >>> best_global_threshold([[0.9, 0.4], [0.3, 0.2]], [[1, 1], [0, 0]], "micro")
        (0.4, 1.0)
    """
    _check_average(average)
    return _best_global(_ScoredTargets(*_prepare(probs, targets)), average, at_least_one)


def f1_curve(
    probs: Any, targets: Any, average: str = "samples", n_points: int | None = None, *,
    at_least_one: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Points of the exact F1-vs-global-threshold step curve, for plots.

    Args:
        probs: (n, c) scores.
        targets: (n, c) 0/1 labels.
        average: "samples", "micro" or "macro".
        n_points: return about this many points, always including the best. On large inputs
            they are spread over the score quantiles and cost no full sort.
        at_least_one: curve of ``apply_thresholds(..., at_least_one=True)``.

    Returns:
        (thresholds, f1), thresholds increasing, every f1 exact. Without ``n_points``: every
        distinct score, then the threshold just above the largest one (predict nothing, or
        top-1 only with at_least_one); that needs a full sort, O(N log N).
    """
    _check_average(average)
    d = _ScoredTargets(*_prepare(probs, targets))
    coarse = n_points is not None and d.buckets[1] >= n_points
    thresholds, f1 = _global_candidates(d, average, at_least_one, "buckets" if coarse else "all")
    if coarse:  # one point per threshold: bucket points may repeat swept ones
        thresholds, first = np.unique(thresholds, return_index=True)
        f1 = f1[first]
    else:
        thresholds, f1 = thresholds[::-1].copy(), f1[::-1].copy()
    if n_points is not None and len(f1) > n_points:
        keep = np.round(np.linspace(0, len(f1) - 1, max(n_points, 2))).astype(np.intp)
        keep = np.union1d(keep, _pick(np.zeros(len(f1), np.intp), thresholds, f1, 1))
        thresholds, f1 = thresholds[keep], f1[keep]
    return thresholds, f1


# ---------------------------------------------------------------------------- per class


def _class_f1(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    tp = np.count_nonzero(pred & y, axis=0)
    return _ratio(2 * tp, np.count_nonzero(pred, axis=0) + np.count_nonzero(y, axis=0))


def _best_per_class(d: _ScoredTargets) -> tuple[np.ndarray, np.ndarray]:
    """Each class's own exact F1-optimal threshold, and that F1."""
    c = d.p.shape[1]
    f1 = _f1_fn(np.count_nonzero(d.y, axis=0))
    g, t, f = _sweep(d.p.ravel(), d.buckets[0], d.class_tables, d.hits, f1, c)
    # "predict nothing" for every class, just above its highest score
    g = np.append(g, np.arange(c))
    t = np.append(t, np.nextafter(d.p.max(axis=0), np.inf))
    f = np.append(f, np.zeros(c))
    chosen = _pick(g, t, f, c)
    return t[chosen], f[chosen]


def _class_thresholds(
    d: _ScoredTargets, min_positives: int, fallback: float | None, average: str
) -> tuple[np.ndarray, dict]:
    thresholds, best_f1 = _best_per_class(d)
    support = np.count_nonzero(d.y, axis=0)
    weak = support < min_positives
    if weak.any():
        if fallback is None:
            fallback = _best_global(d, average, False)[0]
        thresholds[weak] = fallback
    info = {
        "fallback": float(fallback) if weak.any() else None,
        "fallback_classes": np.flatnonzero(weak).tolist(),
        "support": support.tolist(),
        "best_f1": best_f1.tolist(),
        "f1": _class_f1(d.p >= thresholds, d.y).tolist(),
    }
    return thresholds, info


def best_class_thresholds(
    probs: Any, targets: Any, min_positives: int = 5, fallback: float | None = None,
    average: str = "samples",
) -> tuple[np.ndarray, dict]:
    """Per-class thresholds, each the exact maximizer of its own class's F1.

    Args:
        probs: (n, c) scores.
        targets: (n, c) 0/1 labels.
        min_positives: classes with fewer positives than this get ``fallback`` instead,
            because a threshold fitted to a handful of examples is noise.
        fallback: threshold for those classes; None computes ``best_global_threshold(average)``.
        average: the average used for the fallback search.

    Returns:
        (thresholds (c,), info) with info keys ``fallback`` (float, or None when unused),
        ``fallback_classes`` (indices), ``support`` (positives per class), ``best_f1`` (each
        class's best F1 by its own search) and ``f1`` (class F1 at the returned thresholds).
    """
    _check_average(average)
    return _class_thresholds(_ScoredTargets(*_prepare(probs, targets)), min_positives, fallback, average)


# ---------------------------------------------------------------------------- one call


def tune_thresholds(
    probs: Any, targets: Any, average: str = "samples", per_class: bool = True,
    min_positives: int = 5, at_least_one: bool = False,
) -> dict:
    """Choose thresholds for a multi-label model from validation scores.

    Per-class tuning maximizes each class's own F1, which does not guarantee the chosen
    average, so the candidates (fixed 0.5, best global, per-class) are all scored on the
    chosen average and the best is returned: the result never scores below 0.5 on the data
    it was tuned on. Exact ties go to the simpler candidate, in that order.

    Args:
        probs: (n, c) validation scores.
        targets: (n, c) 0/1 validation labels.
        average: the F1 to maximize: "samples", "micro" or "macro".
        per_class: also try per-class thresholds (see ``best_class_thresholds``).
        min_positives: per-class fallback rule, see ``best_class_thresholds``.
        at_least_one: predictions will give empty rows their argmax label; scored that way.

    Returns:
        A JSON-serializable dict: ``per_class`` (the c thresholds to apply), ``global`` (the
        best single threshold), ``chosen`` ("per_class", "global" or "fixed_0.5"),
        ``average``, ``at_least_one``, ``fallback_classes`` and ``f1`` with ``tuned``,
        ``at_0.5`` and the score of every candidate tried.

    Example:
        >>> out = tune_thresholds([[0.9, 0.2], [0.4, 0.7], [0.3, 0.1]], [[1, 0], [1, 1], [0, 0]])
        >>> out["chosen"], out["per_class"]
        ('global', [0.4, 0.4])
        >>> apply_thresholds([[0.35, 0.1]], out["per_class"], out["at_least_one"]).tolist()
        [[False, False]]
    """
    _check_average(average)
    d = _ScoredTargets(*_prepare(probs, targets))
    c = d.p.shape[1]
    g, _ = _best_global(d, average, at_least_one)
    candidates = {"fixed_0.5": np.full(c, 0.5), "global": np.full(c, g)}
    fallback_classes: list[int] = []
    if per_class:
        candidates["per_class"], info = _class_thresholds(d, min_positives, g, average)
        fallback_classes = info["fallback_classes"]
    scores = {k: _f1_of_preds(_apply(d.p, t, at_least_one), d.y, average)
              for k, t in candidates.items()}
    chosen = max(scores, key=scores.__getitem__)  # first of equals: the simplest candidate
    return {
        "global": g,
        "per_class": [float(t) for t in candidates[chosen]],
        "chosen": chosen,
        "average": average,
        "at_least_one": bool(at_least_one),
        "fallback_classes": fallback_classes,
        "f1": {"tuned": scores[chosen], "at_0.5": scores.pop("fixed_0.5"), **scores},
    }


def per_class_report(probs_or_preds: Any, targets: Any, thresholds: Any) -> list[dict]:
    """Precision, recall, F1 and support of every class.

    Args:
        probs_or_preds: (n, c) scores, or boolean predictions (then used as they are).
        targets: (n, c) 0/1 labels.
        thresholds: one float or (c,) thresholds, applied to scores and reported per class.

    Returns:
        One dict per class: ``class`` (index), ``threshold``, ``precision``, ``recall``,
        ``f1``, ``support`` (positives) and ``predicted`` (predicted positives).
    """
    x = _to_numpy(probs_or_preds)
    y = _as_targets(targets, x.shape)
    t = _as_thresholds(thresholds, y.shape[1])
    pred = x if x.dtype == np.bool_ else apply_thresholds(x, t)
    tp = np.count_nonzero(pred & y, axis=0)
    n_pred, support = np.count_nonzero(pred, axis=0), np.count_nonzero(y, axis=0)
    columns = {
        "threshold": t, "precision": _ratio(tp, n_pred), "recall": _ratio(tp, support),
        "f1": _class_f1(pred, y), "support": support, "predicted": n_pred,
    }
    return [{"class": j, **{k: v[j].item() for k, v in columns.items()}} for j in range(len(t))]
