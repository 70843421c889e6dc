"""Labels from probabilities, as a bundle's metadata says: the argmax, or every class at or
above its tuned threshold. numpy only, so the torch Predictor, the onnxruntime one and an
exported `predict.py` (which gets a verbatim copy of this file) decide the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Decider"]


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
        tuned = self.meta.get("thresholds") or {}
        per_class = tuned.get("per_class") or [tuned.get("global", 0.5)] * len(self.classes)
        return np.asarray(per_class, dtype=np.float64)

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> list:
        """Single-label: (label, probability) per row. Multi-label: (labels, probabilities)."""
        if not self.multi_label:
            idx = probs.argmax(1)
            return [(self.classes[i], float(p[i])) for i, p in zip(idx, probs)]
        th = self.thresholds(threshold)
        at_least_one = bool((self.meta.get("thresholds") or {}).get("at_least_one"))
        rows = []
        for p in probs:
            on = np.flatnonzero(p >= th)
            if at_least_one and on.size == 0:
                on = np.array([p.argmax()])
            rows.append(([self.classes[i] for i in on], [float(p[i]) for i in on]))
        return rows

    def probabilities(self, images: Sequence, bs: int = 64) -> np.ndarray:
        raise NotImplementedError

    def predict(self, image, threshold: float | None = None):
        """One image (path or PIL) -> (label, probability); multi-label: (labels, probabilities)."""
        return self.decide(self.probabilities([image]), threshold)[0]

    def predict_many(self, images: Sequence, bs: int = 64, threshold: float | None = None) -> list:
        return self.decide(self.probabilities(list(images), bs), threshold)
