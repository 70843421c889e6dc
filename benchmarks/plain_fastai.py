"""The plain fastai recipe, as a user would write it, for the side-by-side runs.

    python benchmarks/plain_fastai.py DATA --arch mobilenetv3_small_100 --size 64 --epochs 3
Prints one JSON line: accuracy, train_seconds.
"""

from __future__ import annotations

import argparse
import json
import time

from fastai.vision.all import (
    ImageDataLoaders,
    Resize,
    accuracy,
    aug_transforms,
    set_seed,
    vision_learner,
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    a = p.parse_args()
    set_seed(42)
    dls = ImageDataLoaders.from_folder(a.data, valid_pct=0.2, seed=42, item_tfms=Resize(a.size),
                                       batch_tfms=aug_transforms(size=a.size), bs=a.bs)
    learn = vision_learner(dls, a.arch, pretrained=False, metrics=accuracy)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(a.epochs, a.lr)
    train_seconds = time.perf_counter() - t
    print(
        json.dumps(dict(accuracy=float(learn.validate()[1]), train_seconds=round(train_seconds, 3)))
    )


if __name__ == "__main__":
    main()
