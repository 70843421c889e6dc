"""Plain fastai, as a user would write it, on the accuracy-per-second benchmark data.

Single-label (a class folder):  `ImageDataLoaders.from_folder` + `vision_learner` + `fit_one_cycle`.
Multi-label (the mosaic CSV):   a `DataBlock` with `MultiCategoryBlock`; the CSV's captions hold
unquoted commas, so it is read line by line (pandas cannot); samples-F1 is reported at 0.5
and at the best global threshold on the validation set.

    python benchmarks/plain_fastai_aps.py DATA [--multi-label] --size 64 --epochs 3 --lr 2e-3
    python benchmarks/plain_fastai_aps.py DATA --no-aug     # issue 25's plain fastai: Resize only
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.vision.all import (
    ColReader,
    DataBlock,
    ImageBlock,
    ImageDataLoaders,
    MultiCategoryBlock,
    RandomSplitter,
    Resize,
    accuracy,
    accuracy_multi,
    aug_transforms,
    set_seed,
    vision_learner,
)


def samples_f1(probs: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    pred = probs >= threshold
    tp = (pred & targets).sum(1)
    denom = pred.sum(1) + targets.sum(1)
    return float(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0).mean())


def best_global(probs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    grid = np.round(np.arange(0.01, 0.96, 0.01), 2)
    scores = [samples_f1(probs, targets, t) for t in grid]
    i = int(np.argmax(scores))
    return float(scores[i]), float(grid[i])


def _mosaic_frame(folder: Path) -> pd.DataFrame:
    lines = (folder / "train.csv").read_text().splitlines()[1:]
    rows = [line.split(",", 2)[:2] for line in lines if line.strip()]
    return pd.DataFrame(rows, columns=["ImageID", "Labels"])


def _multi_dls(folder: Path, size: int, bs: int, batch_tfms):
    block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock),
                      get_x=ColReader("ImageID", pref=folder / "data"),
                      get_y=ColReader("Labels", label_delim=" "),
                      splitter=RandomSplitter(0.2, seed=42),
                      item_tfms=Resize(size), batch_tfms=batch_tfms)
    return block.dataloaders(_mosaic_frame(folder), bs=bs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--no-aug", action="store_true",
                   help="no batch augmentation (only item_tfms=Resize), as issue 25 defines it")
    a = p.parse_args()
    set_seed(42)
    batch_tfms = None if a.no_aug else aug_transforms(size=a.size)
    if a.multi_label:
        dls = _multi_dls(Path(a.data), a.size, a.bs, batch_tfms)
        metrics = accuracy_multi
    else:
        dls = ImageDataLoaders.from_folder(a.data, valid_pct=0.2, seed=42, item_tfms=Resize(a.size),
                                           batch_tfms=batch_tfms, bs=a.bs)
        metrics = accuracy
    learn = vision_learner(dls, a.arch, pretrained=False, metrics=metrics)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(a.epochs, a.lr)
        probs, targets = learn.get_preds(ds_idx=1)
    out = dict(train_seconds=round(time.perf_counter() - t, 3), n_train=len(dls.train_ds))
    if a.multi_label:
        probs, targets = probs.numpy(), targets.numpy() > 0.5
        out["f1_samples_at_0.5"] = samples_f1(probs, targets, 0.5)
        out["f1_samples"], out["threshold"] = best_global(probs, targets)
    else:
        out["accuracy"] = float((probs.argmax(1) == targets).float().mean())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
