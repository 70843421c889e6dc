"""Likely label errors: class probabilities the model did not train on, ranked by cleanlab.

Out-of-fold probabilities come from cross-validation: each fold's images are predicted by a
model trained on the other folds. The default model is linear, over image features that the
scan already holds (`features.image_features`): seconds, and the same result on a busy
machine as on a quiet one. `out_of_fold` trains a small CNN instead, with `fit`'s own data
preparation, loaders and learner factory, from scratch at a small size, for a fixed number
of epochs that a time budget only shortens (`budget.TimeBudget`). A run directory's model
can stand in, but it has seen its training images, so their labels look more plausible than
they are.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from ..budget import UNBOUNDED_EPOCHS, TimeBudget
from ..config import TrainConfig
from ..data.items import DataError, ItemTable
from ..data.prepare import PreparedData, build_dataloaders
from ..learners import create_model, single_label_learner
from ..lr_search import default_lr

__all__ = ["out_of_fold", "linear_out_of_fold", "run_probabilities", "rank_label_issues",
           "FOLDS", "LABEL_BUDGET", "LABEL_EPOCHS"]

FOLDS = 4
LABEL_BUDGET = 300.0  # seconds for all CNN folds together: a ceiling, not the plan
LABEL_EPOCHS = 8      # epochs of each CNN fold: the plan, so the result does not follow load
# A small ResNet at a small size, from scratch: no weights to download, and several times
# resnet18's speed.
_SETTINGS = dict(arch="resnet10t", size=32, pretrained=False, epochs=LABEL_EPOCHS, quiet=True,
                 workers=0)
_C = 0.1  # inverse L2 strength of the linear model: features outnumber small classes' images


def _folds(labels: list[str], k: int, seed: int) -> np.ndarray:
    """A fold per image, stratified by class; -1 for classes too small to hold out."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(labels), -1)
    counts = Counter(labels)
    for cls in counts:
        if counts[cls] < k:
            continue
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        fold[rng.permutation(idx)] = np.arange(len(idx)) % k
    return fold


def _fold_probs(table: ItemTable, held: np.ndarray, cfg: TrainConfig, seconds: float,
                classes: list[str]) -> np.ndarray:
    """Probabilities of the held-out images from a model trained on the others."""
    fold = ItemTable(list(table.refs), [list(x) for x in table.labels], is_valid=held.tolist(),
                     name=table.name, root=table.root)
    data = PreparedData(fold, cfg)
    if data.vocab != classes or len(data.table.refs) != len(table.refs):
        raise DataError("a fold lost a class or an image; run `easycls check` without "
                        "--labels first and fix what it reports")
    dls = build_dataloaders(cfg, data, normalization=data.pixel_stats())
    model = create_model(cfg.arch, len(classes), False, None, 0.0, cfg.size)
    budget = TimeBudget(seconds, time.perf_counter(), cfg.epochs, max_epochs=cfg.epochs)
    learn = single_label_learner(dls, model, len(classes), pretrained=False, cbs=[budget])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(UNBOUNDED_EPOCHS, default_lr(False, dls.bs))
        probs, _ = learn.get_preds(dl=dls.valid)
    return probs.float().numpy()


def out_of_fold(table: ItemTable, *, folds: int = FOLDS, seconds: float = LABEL_BUDGET,
                seed: int = 0, **settings) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities N x classes, which images have them) from `folds` short runs.

    Images of classes with fewer than `folds` images are always trained on and get none.
    """
    if table.multi_label:
        raise DataError("label issues are ranked for single-label data only")
    labels = [x[0] for x in table.labels]
    classes = table.classes
    cfg = TrainConfig(source=table.name, seed=seed, **{**_SETTINGS, **settings})
    fold = _folds(labels, folds, seed)
    probs = np.zeros((len(labels), len(classes)), np.float32)
    t0 = time.perf_counter()
    for k in range(folds):
        left = seconds - (time.perf_counter() - t0)
        held = fold == k
        probs[held] = _fold_probs(table, held, cfg, max(left / (folds - k), 1.0), classes)
    return probs, fold >= 0


def linear_out_of_fold(features: np.ndarray, labels: list[str], classes: list[str], *,
                       folds: int = FOLDS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities N x classes, which images have them) from a logistic regression per
    fold, over standardized `features`, stratified folds as in `out_of_fold`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold = _folds(labels, folds, seed)
    y = np.array([classes.index(x) for x in labels])
    probs = np.zeros((len(labels), len(classes)), np.float32)
    for k in range(folds):
        held = fold == k
        if not held.any():
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=_C, max_iter=300))
        model.fit(features[~held], y[~held])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(features[held])
    return probs, fold >= 0


def run_probabilities(run_dir: str, refs: list[str], classes: list[str]) -> np.ndarray:
    """Probabilities of `refs` from a run's saved model, columns in `classes` order."""
    from ..bundle import load
    predictor = load(run_dir)
    missing = sorted(set(classes) - set(predictor.classes))
    if missing:
        raise DataError(f"the model in {run_dir} does not know class(es) {missing[:5]}; "
                        "check the data it was trained on")
    probs = predictor.probabilities(refs)
    return probs[:, [predictor.classes.index(c) for c in classes]]


def rank_label_issues(probs: np.ndarray, given: list[str], classes: list[str],
                      refs: list[str]) -> list[dict]:
    """cleanlab's label issues, highest score (1 - label quality) first."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ImportError("ranking label issues needs cleanlab: pip install 'easycls[check]'"
                          ) from None
    y = np.array([classes.index(g) for g in given])
    if len(set(y.tolist())) < 2:
        return []
    issues = find_label_issues(y, probs, filter_by="low_self_confidence")
    score = 1.0 - get_label_quality_scores(y, probs)
    order = sorted(np.flatnonzero(issues).tolist(), key=lambda i: -score[i])
    return [dict(path=refs[i], given=given[i], suggested=classes[int(probs[i].argmax())],
                 score=round(float(score[i]), 4)) for i in order]
