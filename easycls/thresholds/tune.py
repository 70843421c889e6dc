"""Threshold searches: one global threshold, one per class, and `tune_thresholds`, which
chooses between them."""

from __future__ import annotations

from typing import Any

import numpy as np

from .scoring import check_average, class_f1, decide, f1_of_preds, validated
from .search import ScoredTargets, bucket_tables, f1_fn, pick_best, sweep_groups

__all__ = ["best_class_thresholds", "best_global_threshold", "f1_curve", "tune_thresholds"]


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
    d: ScoredTargets, v: np.ndarray, bkt: np.ndarray, n_buckets: int, average: str, how: str
) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, f1) of the global candidates, thresholds decreasing."""
    n, c = d.p.shape
    if average == "samples":  # mean of row F1s: add up the rows' gains
        w = _group_gains(v.reshape(n, c), d.y).ravel()
        args = (bucket_tables(bkt, n_buckets, w, 1), w, lambda a, k, g: a / n, 1, False)
    elif average == "micro":
        support = np.array([np.count_nonzero(d.y)])
        args = (bucket_tables(bkt, n_buckets, d.hits, 1), d.hits, f1_fn(support), 1, False)
    else:  # mean of class F1s
        unchanged = bkt is d.buckets[0]  # else at_least_one moved the row maxima up
        t = d.class_tables if unchanged else bucket_tables(bkt, n_buckets, d.hits, c)
        args = (t, d.hits, f1_fn(np.count_nonzero(d.y, axis=0), 1.0 / c), c, True)
    _, thresholds, f1 = sweep_groups(v, bkt, *args, how=how)
    return thresholds, f1


def _global_candidates(
    d: ScoredTargets, average: str, at_least_one: bool, how: str = "best"
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


def _best_global(d: ScoredTargets, average: str, at_least_one: bool) -> tuple[float, float]:
    thresholds, f1 = _global_candidates(d, average, at_least_one)
    t = float(thresholds[pick_best(np.zeros(len(f1), np.intp), thresholds, f1, 1)[0]])
    return t, f1_of_preds(decide(d.p, t, at_least_one), d.y, average)


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
    check_average(average)
    return _best_global(ScoredTargets(*validated(probs, targets)), average, at_least_one)


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
    check_average(average)
    d = ScoredTargets(*validated(probs, targets))
    coarse = n_points is not None and d.buckets[1] >= n_points
    thresholds, f1 = _global_candidates(d, average, at_least_one, "buckets" if coarse else "all")
    if coarse:  # one point per threshold: bucket points may repeat swept ones
        thresholds, first = np.unique(thresholds, return_index=True)
        f1 = f1[first]
    else:
        thresholds, f1 = thresholds[::-1].copy(), f1[::-1].copy()
    if n_points is not None and len(f1) > n_points:
        keep = np.round(np.linspace(0, len(f1) - 1, max(n_points, 2))).astype(np.intp)
        keep = np.union1d(keep, pick_best(np.zeros(len(f1), np.intp), thresholds, f1, 1))
        thresholds, f1 = thresholds[keep], f1[keep]
    return thresholds, f1


def _best_per_class(d: ScoredTargets) -> tuple[np.ndarray, np.ndarray]:
    """Each class's own exact F1-optimal threshold, and that F1."""
    c = d.p.shape[1]
    f1 = f1_fn(np.count_nonzero(d.y, axis=0))
    g, t, f = sweep_groups(d.p.ravel(), d.buckets[0], d.class_tables, d.hits, f1, c)
    # "predict nothing" for every class, just above its highest score
    g = np.append(g, np.arange(c))
    t = np.append(t, np.nextafter(d.p.max(axis=0), np.inf))
    f = np.append(f, np.zeros(c))
    chosen = pick_best(g, t, f, c)
    return t[chosen], f[chosen]


def _class_thresholds(
    d: ScoredTargets, min_positives: int, fallback: float | None, average: str
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
        "f1": class_f1(d.p >= thresholds, d.y).tolist(),
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
    check_average(average)
    data = ScoredTargets(*validated(probs, targets))
    return _class_thresholds(data, min_positives, fallback, average)


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
    check_average(average)
    d = ScoredTargets(*validated(probs, targets))
    c = d.p.shape[1]
    g, _ = _best_global(d, average, at_least_one)
    candidates = {"fixed_0.5": np.full(c, 0.5), "global": np.full(c, g)}
    fallback_classes: list[int] = []
    if per_class:
        candidates["per_class"], info = _class_thresholds(d, min_positives, g, average)
        fallback_classes = info["fallback_classes"]
    scores = {k: f1_of_preds(decide(d.p, t, at_least_one), d.y, average)
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
