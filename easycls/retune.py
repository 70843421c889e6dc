"""Recompute a trained multi-label model's thresholds on labelled data and update its bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import thresholds as th
from .bundle import load, read_meta
from .config import TrainConfig
from .data.images import check_images
from .data.items import DataError
from .data.prepare import load_items
from .rundir import write_json

__all__ = ["retune_thresholds"]


def _targets(labels: list[list[str]], classes: list[str], source: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for labs in labels for lab in labs} - set(index))
    if unknown:
        raise DataError(f"{source} has labels the model was not trained on: {unknown[:10]}")
    y = np.zeros((len(labels), len(classes)), dtype=bool)
    for row, labs in enumerate(labels):
        y[row, [index[lab] for lab in labs]] = True
    return y


def retune_thresholds(run_dir: str | Path, source: str, images: str | None = None,
                      average: str | None = None, bs: int = 64) -> dict:
    """Tune thresholds on `source` (all its labelled images) and store them in `run_dir/model.json`.

    Example:
        >>> retune_thresholds("runs/comp-resnet50", "data/holdout.csv", images="data/images")
    """
    meta = read_meta(run_dir)
    if not meta.get("multi_label"):
        raise ValueError(f"{run_dir} holds a single-label model; thresholds apply to "
                         "multi-label models")
    average = average or (meta.get("thresholds") or {}).get("average", "samples")
    table = load_items(TrainConfig(source=str(source), images=images))
    table.drop(check_images(table.refs))
    probs = load(run_dir).probabilities(table.refs, bs=bs)
    targets = _targets(table.labels, meta["classes"], source)
    tuned = th.tune_thresholds(probs, targets, average=average)
    tuned["tuned_on"] = {"source": str(source), "images": len(table.refs),
                         "skipped": len(table.skipped)}
    meta["thresholds"] = tuned
    write_json(Path(run_dir) / "model.json", meta)
    return tuned
