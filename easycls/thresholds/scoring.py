"""Scores and targets in, decisions and F1 out: input checks, `apply_thresholds`,
`f1_scores` and the per-class report (the conventions are in the package docstring)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..decide import labels_on

__all__ = ["AVERAGES", "apply_thresholds", "f1_scores", "per_class_report", "check_average",
           "class_f1", "decide", "f1_of_preds", "validated"]

AVERAGES = ("samples", "micro", "macro")


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


def validated(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_scores(probs)
    return p, _as_targets(targets, p.shape)


def _as_thresholds(thresholds: Any, c: int) -> np.ndarray:
    t = np.asarray(_to_numpy(thresholds), dtype=np.float64)
    if t.ndim == 0:
        return np.full(c, float(t))
    if t.shape != (c,):
        raise ValueError(f"thresholds must be a float or shape ({c},), got shape {t.shape}")
    return t


def check_average(average: str) -> None:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


# ---------------------------------------------------------------------------- scoring


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 = 0 (scikit-learn's zero_division=0)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def f1_of_preds(pred: np.ndarray, y: np.ndarray, average: str) -> float:
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
    return decide(_as_scores(probs), thresholds, at_least_one)


def decide(p: np.ndarray, thresholds: Any, at_least_one: bool) -> np.ndarray:
    """`decide.labels_on` (the one multi-label rule) with the thresholds checked."""
    return labels_on(p, _as_thresholds(thresholds, p.shape[1]), at_least_one)


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
    check_average(average)
    p, y = validated(probs, targets)
    return f1_of_preds(decide(p, thresholds, at_least_one), y, average)


# ---------------------------------------------------------------------------- per class


def class_f1(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    tp = np.count_nonzero(pred & y, axis=0)
    return _ratio(2 * tp, np.count_nonzero(pred, axis=0) + np.count_nonzero(y, axis=0))


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
        "f1": class_f1(pred, y), "support": support, "predicted": n_pred,
    }
    return [{"class": j, **{k: v[j].item() for k, v in columns.items()}} for j in range(len(t))]
