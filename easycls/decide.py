"""Labels from probabilities, as a bundle's metadata says: the argmax, or every class at or
above its tuned threshold. numpy only, so the torch Predictor, the onnxruntime one and an
exported `predict.py` (which gets a verbatim copy of this file) decide the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Decider", "labels_on", "tuned_thresholds"]


def labels_on(p: np.ndarray, thresholds, at_least_one: bool) -> np.ndarray:
    """The multi-label decision rule, (n, c) booleans: class j is on in row i iff
    ``p[i, j] >= thresholds[j]`` (one float or one per class); with ``at_least_one`` a row
    with none on takes its argmax. The one rule of `fit`'s metrics (`thresholds.decide`),
    `evaluate`, the Learner's decodes and every predictor."""
    p = np.asarray(p)
    pred = p >= np.asarray(thresholds, dtype=np.float64)
    if at_least_one:
        empty = ~pred.any(axis=1)
        pred[empty, p[empty].argmax(axis=1)] = True
    return pred


def tuned_thresholds(tuned: dict | None, n: int) -> tuple[np.ndarray, bool]:
    """(per-class thresholds, at_least_one) of a bundle's ``thresholds`` entry: its tuned
    per-class thresholds, else its global one, else 0.5 for each of the ``n`` classes."""
    tuned = tuned or {}
    per_class = tuned.get("per_class") or [tuned.get("global", 0.5)] * n
    return np.asarray(per_class, dtype=np.float64), bool(tuned.get("at_least_one"))


class Decider:
    """The decision half of a predictor: classes, thresholds and labels from `meta`
    (model.json). Subclasses add `probabilities(images, bs)`."""

    def __init__(self, meta: dict):
        self.meta = meta
        self.classes: list[str] = meta["classes"]
        self.size: int = meta["input_size"]

    @property
    def multi_label(self) -> bool:
        return bool(self.meta.get("multi_label"))

    def thresholds(self, override: float | None = None) -> np.ndarray:
        """Per-class decision thresholds (multi-label): stored tuned ones unless overridden."""
        if override is not None:
            return np.full(len(self.classes), float(override))
        return tuned_thresholds(self.meta.get("thresholds"), len(self.classes))[0]

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> list:
        """Single-label: (label, probability) per row. Multi-label: (labels, probabilities)."""
        if not self.multi_label:
            idx = probs.argmax(1)
            return [(self.classes[i], float(p[i])) for i, p in zip(idx, probs)]
        at_least_one = tuned_thresholds(self.meta.get("thresholds"), len(self.classes))[1]
        rows = []
        for p, on in zip(probs, labels_on(probs, self.thresholds(threshold), at_least_one)):
            idx = np.flatnonzero(on)
            rows.append(([self.classes[i] for i in idx], [float(p[i]) for i in idx]))
        return rows

    def probabilities(self, images: Sequence, bs: int = 64) -> np.ndarray:
        raise NotImplementedError

    def predict(self, image, threshold: float | None = None):
        """One image (path or PIL) -> (label, probability); multi-label: (labels, probabilities)."""
        return self.decide(self.probabilities([image]), threshold)[0]

    def predict_many(self, images: Sequence, bs: int = 64, threshold: float | None = None) -> list:
        return self.decide(self.probabilities(list(images), bs), threshold)
