"""Running single-label scores: what evaluation needs, kept batch by batch.

Holding every probability costs N x C floats (5 GB at ImageNet's 1.28M x 1000 in
float32, several times that with temporaries). The report needs much less: a confusion
matrix (C x C counts), top-k hits, the loss sum, and per image the predicted class, its
probability and the loss (N numbers each), plus the few worst losses for the top-losses
grid. Probabilities themselves are kept only when asked for, in float16.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["SingleLabelTally"]

_EPS = 1e-12


class SingleLabelTally:
    """Counts and per-image facts of single-label predictions, updated batch by batch.

    Example:
        >>> tally = SingleLabelTally(n_classes=3)
        >>> tally.update(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), np.array([0, 1]))
        >>> tally.metrics()["accuracy"], tally.confusion[1, 2]
        (0.5, 1)
    """

    def __init__(self, n_classes: int, top_k: int = 5, n_worst: int = 16,
                 keep_probs: bool = False):
        self.n_classes, self.top_k, self.n_worst = n_classes, top_k, n_worst
        self.confusion = np.zeros((n_classes, n_classes), np.int64)
        self.n = self.top_hits = 0
        self.loss_sum = 0.0
        self._preds: list[np.ndarray] = []
        self._p_pred: list[np.ndarray] = []
        self._p_true: list[np.ndarray] = []
        self._probs: list[np.ndarray] | None = [] if keep_probs else None
        self._worst: list[tuple[float, int]] = []  # min-heap of (loss, index)

    def update(self, probs: np.ndarray, targets: np.ndarray) -> None:
        """Add a batch: ``(B, C)`` probabilities and ``(B,)`` true class indices."""
        probs, targets = np.asarray(probs, np.float32), np.asarray(targets, np.int64)
        rows = np.arange(len(targets))
        preds = probs.argmax(1)
        p_true = probs[rows, targets]
        losses = -np.log(np.maximum(p_true, _EPS))
        np.add.at(self.confusion, (targets, preds), 1)
        if self.n_classes >= 10:
            k = min(self.top_k, self.n_classes)
            top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
            self.top_hits += int((top == targets[:, None]).any(1).sum())
        self.loss_sum += float(losses.astype(np.float64).sum())
        self._keep(preds, probs[rows, preds], p_true, losses, probs)
        self.n += len(targets)

    def _keep(self, preds, p_pred, p_true, losses, probs) -> None:
        self._preds.append(preds.astype(np.int32))
        self._p_pred.append(p_pred.astype(np.float32))
        self._p_true.append(p_true.astype(np.float32))
        if self._probs is not None:
            self._probs.append(probs.astype(np.float16))
        for k, loss in enumerate(losses.tolist()):
            item = (loss, self.n + k)
            if len(self._worst) < self.n_worst:
                heapq.heappush(self._worst, item)
            elif item > self._worst[0]:
                heapq.heapreplace(self._worst, item)

    @staticmethod
    def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    @property
    def preds(self) -> np.ndarray:
        """Predicted class of each image, in order."""
        return self._cat(self._preds, np.int32)

    @property
    def p_pred(self) -> np.ndarray:
        """Probability of the predicted class of each image."""
        return self._cat(self._p_pred, np.float32)

    @property
    def p_true(self) -> np.ndarray:
        """Probability of the true class of each image."""
        return self._cat(self._p_true, np.float32)

    @property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each image."""
        return -np.log(np.maximum(self.p_true, _EPS))

    @property
    def probs(self) -> np.ndarray | None:
        """``(N, C)`` float16 probabilities when kept, else None."""
        if self._probs is None:
            return None
        return np.concatenate(self._probs) if self._probs else np.zeros(
            (0, self.n_classes), np.float16)

    def worst(self) -> list[int]:
        """Indices of the highest-loss images, worst first."""
        return [i for _, i in sorted(self._worst, reverse=True)]

    def metrics(self) -> dict:
        """accuracy, valid_loss, n_valid, and top5_accuracy at 10 or more classes (the
        `metrics.json` keys of `metrics.single_label_metrics`)."""
        n = max(self.n, 1)
        out = {"accuracy": float(np.trace(self.confusion) / n),
               "valid_loss": self.loss_sum / n, "n_valid": int(self.n)}
        if self.n_classes >= 10:
            out[f"top{self.top_k}_accuracy"] = self.top_hits / n
        return out
