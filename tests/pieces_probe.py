"""Run `easycls.fit` with user callbacks under a launcher; each rank records what ran where.

Usage (from tests/test_pieces.py):
    torchrun --nproc_per_node 2 tests/pieces_probe.py DATA OUT RECORDS [dls]

Each rank writes RECORDS/rank<r>.json: the training batches its own callback counted, the
epochs it trained, and whether the user's CSVLogger (a logger: rank 0 only) was attached.
With `dls`, `fit` trains on the user's own fastai DataLoaders over DATA's train/ and
valid/ folders, and each rank also records `learn.predict` of the first validation images.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import EarlyStoppingCallback

import easycls


class CountBatches(Callback):
    def __init__(self):
        self.seen, self.epochs = 0, 0

    def after_batch(self):
        self.seen += int(self.training)

    def after_train(self):
        self.epochs += 1


def user_dataloaders(data: str, out: str, records: str) -> None:
    from fastai.vision.augment import Resize
    from fastai.vision.data import ImageDataLoaders
    counter = CountBatches()
    dls = ImageDataLoaders.from_folder(data, valid="valid", item_tfms=Resize(16), bs=8,
                                       num_workers=0)
    learn = easycls.fit(dls, out=out, arch="test_resnet", pretrained=False, epochs=2, lr=1e-2,
                        quiet=True, cbs=[counter])
    files = sorted(str(f) for f in Path(data).glob("valid/*/*.png"))[:12]
    main_rank = os.environ.get("RANK", "0") == "0"  # the Learner is rank 0's after fit
    _record(records, seen=counter.seen, epochs=counter.epochs, files=files,
            predict=[str(learn.predict(f)[0]) for f in files] if main_rank else [])


def _record(records: str, **facts) -> None:
    rank = int(os.environ.get("RANK", "0"))
    Path(records).mkdir(parents=True, exist_ok=True)
    (Path(records) / f"rank{rank}.json").write_text(json.dumps(facts))


def main(data: str, out: str, records: str) -> None:
    counter = CountBatches()
    logger = CSVLogger(fname=str(Path(out).resolve() / "user_log.csv"))
    # lr near zero: no improvement by min_delta, so every rank stops after the second epoch.
    learn = easycls.fit(data, out=out, arch="test_resnet", pretrained=False, epochs=4, size=16,
                        bs=8, lr=1e-9, quiet=True, augment=False, cache=False, workers=0,
                        cbs=[counter, logger,
                             EarlyStoppingCallback(monitor="valid_loss", patience=1,
                                                   min_delta=10.0)])
    _record(records, seen=counter.seen, epochs=counter.epochs,
            logger_attached=logger in learn.cbs)


if __name__ == "__main__":
    (user_dataloaders if sys.argv[4:] == ["dls"] else main)(*sys.argv[1:4])
