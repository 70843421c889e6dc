"""Train under a launcher, then use fastai's API on rank 0 alone (tests/test_fastai_contract.py).

Usage:
    torchrun --nproc_per_node 2 tests/contract_probe.py DATA OUT RESULT_JSON

DATA holds train.csv and images/ (multi-label). After `fit` returns, rank 0 runs predict,
test_dl + get_preds, show_results, summary, tta, export and load_learner without the other
ranks, and writes what it got to RESULT_JSON; the other ranks just exit.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import easycls  # noqa: E402


def main(data: str, out: str, result: str) -> None:
    learn = easycls.fit(str(Path(data, "train.csv")), images=str(Path(data, "images")), out=out,
                        arch="resnet18", pretrained=False, epochs=1, size=32, bs=8, lr=2e-3,
                        quiet=True, cache=False)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if int(os.environ.get("RANK", 0)) != 0:
        return
    import matplotlib.pyplot as plt
    from fastai.learner import load_learner
    f = str(learn.dls.valid.dataset.pixels.refs[0])
    preds, _ = learn.get_preds(dl=learn.dls.test_dl([f, f]))
    learn.show_results(max_n=4)
    axes = [ax for ax in plt.gcf().axes if ax.images]
    tta, _ = learn.tta(n=2)
    learn.export(Path(out, "export.pkl"))  # learn.path is not the run directory
    # fastai's load_learner starts with a barrier of all ranks (it follows WORLD_SIZE); a
    # file loaded by one process alone is loaded as in a process of its own.
    os.environ["WORLD_SIZE"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_learner(Path(out, "export.pkl"))
    Path(result).write_text(json.dumps(dict(
        world=world, file=f, predict=list(learn.predict(f)[0]),
        loaded_predict=list(loaded.predict(f)[0]), test_preds_shape=list(preds.shape),
        tta_shape=list(tta.shape), n_valid=len(learn.dls.valid.dataset),
        show_results_axes=len(axes), summary=learn.summary())))


if __name__ == "__main__":
    main(*sys.argv[1:4])
