"""Tests for easycls.thresholds against brute force and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from easycls.thresholds import (
    AVERAGES,
    apply_thresholds,
    best_class_thresholds,
    best_global_threshold,
    f1_curve,
    f1_scores,
    per_class_report,
    tune_thresholds,
)

SEEDS = range(40)


# ---------------------------------------------------------------------------- references


def ref_f1(pred: np.ndarray, y: np.ndarray, average: str) -> np.ndarray:
    """F1 straight from the definition, for a stack of predictions (..., n, c)."""
    axis = {"samples": -1, "macro": -2, "micro": (-2, -1)}[average]
    tp = (pred & y).sum(axis=axis)
    den = pred.sum(axis=axis) + y.sum(axis=axis)
    f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
    return f1 if average == "micro" else f1.mean(axis=-1)


def with_argmax(pred: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """at_least_one, written out: empty rows get their argmax label."""
    top = np.eye(probs.shape[1], dtype=bool)[probs.argmax(axis=1)]
    return pred | (top & ~pred.any(axis=-1, keepdims=True))


def brute_curve(probs, y, average, at_least_one=False):
    """F1 at every candidate (distinct scores and just above the max), thresholds increasing."""
    cands = np.append(np.unique(probs), np.nextafter(probs.max(), np.inf))
    pred = probs[None] >= cands[:, None, None]
    if at_least_one:
        pred = with_argmax(pred, probs)
    return cands, ref_f1(pred, y[None], average)


def tie_rule(cands: np.ndarray, f1: np.ndarray) -> float:
    """Documented choice: F1 within 1e-12 of the best, then closest to 0.5, then larger."""
    near = cands[f1 >= f1.max() - 1e-12]
    dist = np.abs(near - 0.5)
    return float(near[dist == dist.min()].max())


def make_data(seed: int, n: int | None = None, c: int | None = None):
    """Small random problems with ties, empty and full classes, rows without positives."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(1, 16))
    c = c or int(rng.integers(1, 7))
    probs = rng.random((n, c))
    if seed % 2 == 0:
        probs = probs.round(1)  # many ties
    if seed % 5 == 1:
        probs = (probs - 0.5) * 8  # logits: negative scores
    y = rng.random((n, c)) < rng.uniform(0.1, 0.7)
    if seed % 3 == 0 and c > 2:
        y[:, 0], y[:, 1] = False, True  # a class without positives, an all-positive class
    if seed % 4 == 0 and n > 2:
        y[0] = False  # a row without positives
    if seed % 7 == 5:
        y[:] = False  # no positives at all: every threshold scores 0
    return probs, y


def skewed_data(seed: int, n: int = 300, c: int = 8):
    """Larger, sigmoid-like scores crowded near 0 (many buckets, so pruning is exercised)."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < rng.uniform(0.01, 0.3, c)
    probs = 1 / (1 + np.exp(-(rng.normal(-6, 2.5, (n, c)) + 5 * y)))
    probs[rng.random((n, c)) < 0.05] = 0.0
    probs[:5, 0] = 1.0
    return probs.round(int(rng.integers(3, 9))), y


# ---------------------------------------------------------------------------- f1_scores


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("average", AVERAGES)
def test_f1_scores_matches_sklearn(seed, average):
    probs, y = make_data(seed, n=int(3 + seed), c=int(2 + seed % 5))  # sklearn: c >= 2
    thresholds = np.random.default_rng(seed).random(y.shape[1]) if seed % 2 else 0.5
    expected = f1_score(y, probs >= thresholds, average=average, zero_division=0)
    assert f1_scores(probs, y, thresholds, average) == pytest.approx(expected, abs=1e-12)


def test_f1_scores_zero_division_convention():
    # a row/class with no true and no predicted labels scores 0, as in sklearn zero_division=0
    y = np.array([[0, 0], [1, 0]])
    probs = np.array([[0.1, 0.1], [0.9, 0.1]])
    expected = {"samples": 0.5, "macro": 0.5, "micro": 1.0}
    for average, value in expected.items():
        assert f1_scores(probs, y, 0.5, average) == value
        assert f1_score(y, probs >= 0.5, average=average, zero_division=0) == value
    empty = np.zeros((2, 2))
    for average in AVERAGES:
        assert f1_scores(empty, empty, 0.5, average) == 0.0
        assert f1_score(empty, empty >= 0.5, average=average, zero_division=0) == 0.0


def test_f1_scores_at_least_one():
    probs = np.array([[0.2, 0.3], [0.9, 0.1]])
    y = np.array([[0, 1], [1, 0]])
    assert f1_scores(probs, y, 0.5, "samples") == 0.5
    assert f1_scores(probs, y, 0.5, "samples", at_least_one=True) == 1.0


def test_accepts_torch_tensors():
    probs, y = make_data(3, n=10, c=4)
    tp, ty = torch.tensor(probs, dtype=torch.float32), torch.tensor(y)
    p32 = tp.numpy().astype(np.float64)
    for average in AVERAGES:
        assert f1_scores(tp, ty, 0.5, average) == f1_scores(p32, y, 0.5, average)
        assert best_global_threshold(tp, ty.int(), average) == best_global_threshold(
            p32, y, average
        )


@pytest.mark.parametrize(
    ("probs", "targets", "message"),
    [
        (np.zeros((2, 3)), np.zeros((3, 2)), "does not match"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), "NaN"),
        (np.zeros((2, 2)), np.full((2, 2), 2), "0/1"),
        (np.zeros(4), np.zeros(4), r"\(n, c\)"),
    ],
)
def test_bad_input_is_rejected(probs, targets, message):
    with pytest.raises(ValueError, match=message):
        best_global_threshold(probs, targets)


def test_bad_average_and_thresholds_are_rejected():
    with pytest.raises(ValueError, match="average"):
        f1_scores(np.zeros((2, 2)), np.zeros((2, 2)), 0.5, "weighted")
    with pytest.raises(ValueError, match="thresholds"):
        apply_thresholds(np.zeros((2, 2)), [0.5, 0.5, 0.5])


# ---------------------------------------------------------------------------- apply_thresholds


def test_apply_thresholds_at_least_one_emits_argmax_on_empty_rows():
    probs = np.array([[0.1, 0.4, 0.3], [0.6, 0.7, 0.2], [0.0, 0.0, 0.05]])
    plain = apply_thresholds(probs, [0.5, 0.5, 0.5])
    assert plain.tolist() == [[False, False, False], [True, True, False], [False] * 3]
    forced = apply_thresholds(torch.tensor(probs), 0.5, at_least_one=True)
    assert forced.tolist() == [[False, True, False], [True, True, False], [False, False, True]]


# ---------------------------------------------------------------------------- global search


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", AVERAGES)
def test_best_global_threshold_matches_brute_force(seed, average):
    probs, y = make_data(seed)
    cands, f1 = brute_curve(probs, y, average)
    t, best = best_global_threshold(probs, y, average)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert t == tie_rule(cands, f1)
    assert ref_f1(probs >= t, y, average) == pytest.approx(best, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("average", AVERAGES)
def test_best_global_threshold_on_larger_skewed_data(seed, average):
    probs, y = skewed_data(seed)
    cands, f1 = brute_curve(probs, y, average)
    t, best = best_global_threshold(probs, y, average)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert t == tie_rule(cands, f1)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("average", AVERAGES)
def test_best_global_threshold_with_at_least_one(seed, average):
    probs, y = make_data(seed)
    cands, f1 = brute_curve(probs, y, average, at_least_one=True)
    t, best = best_global_threshold(probs, y, average, at_least_one=True)
    assert best == pytest.approx(f1.max(), abs=1e-12)
    assert f1_scores(probs, y, t, average, at_least_one=True) == best
    curve = f1_curve(probs, y, average, at_least_one=True)[1]
    assert curve.max() == pytest.approx(best, abs=1e-12)


def test_tie_break_prefers_threshold_closest_to_half():
    # micro-F1 2a / (k + 3) is 2/3 both at the 3rd score (a=2, k=3) and at the 6th (a=3, k=6)
    y = np.array([[1, 0, 1], [0, 0, 1]])
    probs = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
    assert best_global_threshold(probs, y, "micro") == (0.4, pytest.approx(2 / 3))
    probs = np.array([[0.9, 0.8, 0.7], [0.45, 0.35, 0.2]])
    assert best_global_threshold(probs, y, "micro") == (0.7, pytest.approx(2 / 3))
    # no positives at all: every candidate scores 0
    probs = np.array([[0.1, 0.45], [0.58, 0.9]])
    assert best_global_threshold(probs, np.zeros((2, 2)), "samples") == (0.45, 0.0)
    probs = np.array([[0.4, 0.6]])  # equally close to 0.5: the larger
    assert best_global_threshold(probs, np.zeros((1, 2)), "macro") == (0.6, 0.0)


def test_equal_scores_enter_together():
    # a positive and a negative share the score 0.6: no threshold separates them
    probs = np.array([[0.6, 0.6, 0.2]])
    y = np.array([[1, 0, 0]])
    t, best = best_global_threshold(probs, y, "micro")
    assert (t, best) == (0.6, pytest.approx(2 / 3))


def test_negative_zero_ties_with_zero():
    probs = np.array([[-0.0, 0.0, -1.0], [0.0, -0.0, -2.0]])
    y = np.array([[1, 1, 0], [1, 1, 0]])
    assert best_global_threshold(probs, y, "micro") == (0.0, 1.0)


@pytest.mark.parametrize("average", AVERAGES)
def test_extreme_scores(average):
    # huge, tiny, subnormal, negative and signed-zero scores still bucket in order
    rng = np.random.default_rng(0)
    values = np.array([1e300, -1e300, 5e-324, -5e-324, 1e-300, 0.0, -0.0, 1.0, -1.0, 0.5])
    probs = rng.choice(values, size=(40, 6))
    y = rng.random((40, 6)) < 0.4
    cands, f1 = brute_curve(probs, y, average)
    t, best = best_global_threshold(probs, y, average)
    assert best == pytest.approx(f1.max(), abs=1e-12) and t == tie_rule(cands, f1)
    expected, _ = brute_class_thresholds(probs, y)
    np.testing.assert_array_equal(best_class_thresholds(probs, y, min_positives=0)[0], expected)


@pytest.mark.parametrize("average", AVERAGES)
def test_heavy_ties(average):
    # constant outputs, or most scores saturated at exactly 0.0 / 1.0
    rng = np.random.default_rng(1)
    y = rng.random((500, 6)) < 0.2
    constant = np.full(y.shape, 0.3)
    saturated = np.where(rng.random(y.shape) < 0.8, y * 1.0, rng.random(y.shape))
    for probs in (constant, saturated):
        cands, f1 = brute_curve(probs, y, average)
        t, best = best_global_threshold(probs, y, average)
        assert best == pytest.approx(f1.max(), abs=1e-12) and t == tie_rule(cands, f1)
        expected, _ = brute_class_thresholds(probs, y)
        np.testing.assert_array_equal(best_class_thresholds(probs, y, min_positives=0)[0], expected)


# ---------------------------------------------------------------------------- f1_curve


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("average", AVERAGES)
def test_f1_curve_is_the_exact_step_curve(seed, average):
    probs, y = make_data(seed) if seed < 8 else skewed_data(seed, n=200, c=6)
    cands, f1 = brute_curve(probs, y, average)
    thresholds, curve = f1_curve(probs, y, average)
    np.testing.assert_array_equal(thresholds, cands)
    np.testing.assert_allclose(curve, f1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_points", [50, 1000])
@pytest.mark.parametrize("average", AVERAGES)
def test_f1_curve_subsampling_keeps_exact_points_and_the_best(n_points, average):
    probs, y = skewed_data(1, n=300, c=8)  # 2400 scores: 50 points come from bucket bottoms
    full_t, full_f1 = f1_curve(probs, y, average)
    t, f1 = f1_curve(probs, y, average, n_points=n_points)
    assert min(n_points, len(full_t)) <= len(t) <= n_points + 1 and np.all(np.diff(t) > 0)
    np.testing.assert_allclose(f1, full_f1[np.searchsorted(full_t, t)], rtol=0, atol=1e-12)
    assert best_global_threshold(probs, y, average)[0] == t[np.argmax(f1)]


# ---------------------------------------------------------------------------- per class


def brute_class_thresholds(probs, y):
    thresholds, best = [], []
    for j in range(y.shape[1]):
        cands, f1 = brute_curve(probs[:, [j]], y[:, [j]], "micro")
        thresholds.append(tie_rule(cands, f1))
        best.append(f1.max())
    return np.array(thresholds), np.array(best)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_class_thresholds_match_brute_force(seed):
    probs, y = make_data(seed) if seed < 34 else skewed_data(seed)
    expected, expected_f1 = brute_class_thresholds(probs, y)
    thresholds, info = best_class_thresholds(probs, y, min_positives=0)
    np.testing.assert_array_equal(thresholds, expected)
    np.testing.assert_allclose(info["best_f1"], expected_f1, rtol=0, atol=1e-12)
    assert info["fallback_classes"] == [] and info["fallback"] is None


def test_min_positives_fallback():
    probs, y = make_data(3, n=30, c=5)
    y[:, 0], y[:3, 1] = False, True
    y[3:, 1] = False  # class 1 has 3 positives
    support = y.sum(axis=0)
    thresholds, info = best_class_thresholds(probs, y, min_positives=4, fallback=0.37)
    weak = np.flatnonzero(support < 4).tolist()
    assert info["fallback_classes"] == weak and {0, 1} <= set(weak)
    assert np.all(thresholds[weak] == 0.37) and info["fallback"] == 0.37
    own, _ = brute_class_thresholds(probs, y)
    strong = support >= 4
    np.testing.assert_array_equal(thresholds[strong], own[strong])
    # no fallback given: the best global threshold for the chosen average
    thresholds, info = best_class_thresholds(probs, y, min_positives=4, average="macro")
    assert np.all(thresholds[weak] == best_global_threshold(probs, y, "macro")[0])
    assert info["f1"][0] == 0.0 and len(info["support"]) == 5


# ---------------------------------------------------------------------------- tune_thresholds


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", AVERAGES)
def test_tune_never_below_fixed_half(seed, average):
    probs, y = make_data(seed, n=int(4 + seed % 13), c=int(2 + seed % 5))
    if seed % 5 != 1:
        probs = probs ** (1 + seed % 3)  # shift scores so that 0.5 is not always optimal
    at_least_one = seed % 2 == 1
    out = tune_thresholds(probs, y, average, min_positives=seed % 4, at_least_one=at_least_one)
    tuned = f1_scores(probs, y, out["per_class"], average, at_least_one=at_least_one)
    fixed = f1_scores(probs, y, 0.5, average, at_least_one=at_least_one)
    assert tuned == out["f1"]["tuned"] >= fixed == out["f1"]["at_0.5"]
    assert out["f1"]["tuned"] >= out["f1"]["global"]


def test_tune_result_shape_and_json():
    probs, y = skewed_data(2, n=300, c=6)
    out = tune_thresholds(torch.tensor(probs), torch.tensor(y), "macro", min_positives=5)
    assert json.loads(json.dumps(out)) == out
    assert set(out) >= {"global", "per_class", "average", "at_least_one", "f1", "chosen"}
    assert len(out["per_class"]) == 6 and out["average"] == "macro"
    assert out["chosen"] in ("per_class", "global", "fixed_0.5")
    assert out["global"] == best_global_threshold(probs, y, "macro")[0]
    if out["chosen"] == "per_class":
        for j in out["fallback_classes"]:
            assert out["per_class"][j] == out["global"]
    only_global = tune_thresholds(probs, y, "macro", per_class=False)
    assert "per_class" not in only_global["f1"] and only_global["chosen"] != "per_class"


def test_tune_falls_back_to_fixed_half_when_nothing_beats_it():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    y = np.array([[1, 0], [0, 1]])
    out = tune_thresholds(probs, y, "samples", min_positives=0)
    assert out["chosen"] == "fixed_0.5" and out["per_class"] == [0.5, 0.5]
    assert out["f1"]["tuned"] == 1.0


# ---------------------------------------------------------------------------- report


def test_per_class_report_matches_sklearn():
    probs, y = skewed_data(4, n=200, c=5)
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5]
    report = per_class_report(probs, y, thresholds)
    p, r, f, s = precision_recall_fscore_support(
        y, probs >= thresholds, average=None, zero_division=0)
    assert [row["class"] for row in report] == list(range(5))
    np.testing.assert_allclose([row["precision"] for row in report], p)
    np.testing.assert_allclose([row["recall"] for row in report], r)
    np.testing.assert_allclose([row["f1"] for row in report], f)
    assert [row["support"] for row in report] == s.tolist()
    assert [row["threshold"] for row in report] == thresholds
    preds = per_class_report(torch.tensor(probs >= 0.3), y, 0.3)
    assert preds == per_class_report(probs, y, 0.3)
    json.dumps(report)
