"""Validation metrics (the `metrics.json` contract), and the fastai pieces that gather them
batch by batch.

Single-label validation keeps counts, not predictions: fastai's `AccumMetric` and
`get_preds` hold every probability (N x C floats: 200 MB for ImageNet's 50,000 x 1,000
validation images, on every process, twice over while they are concatenated). Each batch is
gathered across processes as fastai gathers it (`learn.to_detach`), counted, and dropped.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.learner import Metric

from . import thresholds as th
from .tally import SingleLabelTally

__all__ = ["single_label_metrics", "multi_label_metrics", "multi_label_scores",
           "confusion_matrix", "TopKAccuracy", "TallyValidation", "LastValidation",
           "LastProbabilities", "MultiLabelScore"]


class TopKAccuracy(Metric):
    """fastai metric: share of images whose class is among the `k` most probable (k=1:
    accuracy), from running counts of the gathered batches.

    Example:
        >>> learn.metrics = [TopKAccuracy(1), TopKAccuracy(5)]  # doctest: +SKIP
    """

    def __init__(self, k: int = 1):
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.hits = self.n = 0

    def accumulate(self, learn) -> None:
        pred, targ = learn.to_detach(learn.pred, cpu=False), learn.to_detach(learn.y, cpu=False)
        if self.k == 1:  # the same argmax as fastai's `accuracy`
            hit = pred.argmax(-1) == targ
        else:
            hit = (pred.topk(min(self.k, pred.shape[-1]), dim=-1).indices == targ[:, None]).any(-1)
        self.hits += int(hit.sum())
        self.n += len(targ)

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def name(self) -> str:
        return "accuracy" if self.k == 1 else f"top{self.k}_accuracy"


class MultiLabelScore(Metric):
    """fastai metric: one of `multi_label_scores` (`f1_samples`, `f1_micro`,
    `precision_micro`, ...) at the thresholds the Learner decides with: its loss's tuned
    `thresholds` once `fit` has set them (so `learn.validate()` agrees with metrics.json and
    with `predict`), else the loss's `thresh` (0.5).

    Example:
        >>> learn.metrics = [MultiLabelScore("f1_samples")]  # doctest: +SKIP
    """

    def __init__(self, key: str = "f1_samples"):
        self.key = key
        self.reset()

    def reset(self) -> None:
        self.probs, self.targs, self.th = [], [], (0.5, False)

    def accumulate(self, learn) -> None:
        pred, targ = learn.to_detach(learn.pred), learn.to_detach(learn.y)
        self.probs.append(pred.float().sigmoid().numpy())
        self.targs.append(targ.numpy() > 0.5)
        loss = learn.loss_func
        tuned = getattr(loss, "thresholds", None)
        self.th = (getattr(loss, "thresh", 0.5) if tuned is None else np.asarray(tuned),
                   bool(getattr(loss, "at_least_one", False)))

    @property
    def value(self) -> float | None:
        if not self.probs:
            return None
        scores = multi_label_scores(np.concatenate(self.probs).astype(np.float64),
                                    np.concatenate(self.targs), *self.th)
        return float(scores[self.key])

    @property
    def name(self) -> str:
        return self.key


class TallyValidation(Callback):
    """Counts a validation pass into a `SingleLabelTally` (softmax of the gathered logits).

    Example:
        >>> tally = SingleLabelTally(len(learn.dls.vocab))
        >>> learn.get_preds(with_preds=False, with_targs=False,
        ...                 cbs=[TallyValidation(tally)])  # doctest: +SKIP
        >>> tally.metrics()["accuracy"], tally.confusion
    """

    def __init__(self, tally: SingleLabelTally):
        self.tally = tally

    def after_batch(self) -> None:
        if self.training or self.tally is None:
            return
        logits, targ = self.learn.to_detach(self.learn.pred), self.learn.to_detach(self.learn.y)
        self.tally.update(logits.float().softmax(-1).numpy(), targ.numpy())


class LastValidation(TallyValidation):
    """Tallies each validation pass of a fit afresh; after the fit, `last` is the final
    model's pass (validation ends every epoch), so `fit` need not run the pass again.
    `last` stays None until a pass has finished."""

    def __init__(self, n_classes: int):
        super().__init__(None)
        self.n_classes, self.last = n_classes, None

    def before_validate(self) -> None:
        self.tally = SingleLabelTally(self.n_classes)

    def after_validate(self) -> None:
        self.last, self.tally = self.tally, None

    def after_cancel_validate(self) -> None:
        self.tally = None

    def before_train(self) -> None:
        self.last = None  # the weights change: an earlier pass no longer scores the model


class LastProbabilities(Callback):
    """Multi-label: keeps each validation pass's probabilities (sigmoid of the gathered
    logits, whatever the loss) and targets; after the fit, `last` is the final model's
    (probs, targets), so `fit` tunes its thresholds without a pass of its own. One pass is
    held at a time, the N x labels that the final pass would have made. `last` stays None
    until a pass has finished."""

    def __init__(self):
        self.last, self._seen = None, None

    def before_validate(self) -> None:
        self._seen = []

    def after_batch(self) -> None:
        if self.training or self._seen is None:
            return
        pred, targ = self.learn.to_detach(self.learn.pred), self.learn.to_detach(self.learn.y)
        self._seen.append((pred.float().sigmoid(), targ))

    def after_validate(self) -> None:
        seen, self._seen = self._seen, None
        self.last = (torch.cat([p for p, _ in seen]), torch.cat([t for _, t in seen])) if seen \
            else None

    def after_cancel_validate(self) -> None:
        self._seen = None

    def before_train(self) -> None:
        self.last = None  # the weights change: an earlier pass no longer scores the model


def single_label_metrics(probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """accuracy, valid_loss (cross-entropy), and top5_accuracy at 10 or more classes."""
    probs, targets = probs.float(), targets.long()
    out = {
        "accuracy": float((probs.argmax(1) == targets).float().mean()),
        "valid_loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), targets)),
        "n_valid": int(len(targets)),
    }
    if probs.shape[1] >= 10:
        top5 = probs.topk(5, dim=1).indices
        out["top5_accuracy"] = float((top5 == targets[:, None]).any(1).float().mean())
    return out


def multi_label_scores(probs: np.ndarray, targets: np.ndarray, thresholds,
                       at_least_one: bool = False) -> dict:
    """F1 (samples, micro, macro), micro precision and recall of thresholded scores."""
    pred = th.apply_thresholds(probs, thresholds, at_least_one)
    tp = int((pred & targets).sum())
    out = {f"f1_{avg}": th.f1_scores(probs, targets, thresholds, average=avg,
                                     at_least_one=at_least_one) for avg in th.AVERAGES}
    out["precision_micro"] = tp / max(int(pred.sum()), 1)
    out["recall_micro"] = tp / max(int(targets.sum()), 1)
    return out


def multi_label_metrics(probs: torch.Tensor, targets: torch.Tensor,
                        average: str = "samples") -> dict:
    """F1s, precision and recall at tuned thresholds, the same `at_0.5`, and the thresholds."""
    p = probs.float().numpy().astype(np.float64)
    t = targets.numpy() > 0.5
    tuned = th.tune_thresholds(p, t, average=average)
    loss = F.binary_cross_entropy(probs.float().clamp(1e-7, 1 - 1e-7), targets.float())
    return {**multi_label_scores(p, t, tuned["per_class"]), "at_0.5": multi_label_scores(p, t, 0.5),
            "valid_loss": float(loss), "n_valid": int(len(t)), "thresholds": tuned}


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets), np.asarray(preds)), 1)
    return cm
