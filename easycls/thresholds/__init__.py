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

from .scoring import AVERAGES, apply_thresholds, f1_scores, per_class_report
from .tune import best_class_thresholds, best_global_threshold, f1_curve, tune_thresholds

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
