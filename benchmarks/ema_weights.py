"""Would an EMA of the weights pay in a short budget run? One `easycls.fit` under a time
budget, with timm's `ModelEmaV3` kept alongside at a few decays; the validation accuracy of
the final weights and of each average, all from the same run.

    python benchmarks/ema_weights.py DATA OUT --budget 50 --decays 0.9,0.95,0.98
Prints one JSON line. The budget counts from the `fit` call (the CLI counts imports too).
"""

from __future__ import annotations

import argparse
import copy
import json
import os

from fastai.callback.core import Callback
from timm.utils import ModelEmaV3

import easycls


class _Averages(Callback):
    order = 100  # after the optimizer step

    def __init__(self, decays: list[float]):
        self.decays, self.emas = decays, {}

    def before_fit(self):
        if not self.emas:
            self.emas = {d: ModelEmaV3(self.learn.model, decay=d) for d in self.decays}

    def after_step(self):
        for ema in self.emas.values():
            ema.update(self.learn.model, step=self.learn.train_iter)


def _accuracy(learn) -> float:
    probs, targets = learn.get_preds(ds_idx=1)
    return round(float((probs.argmax(1) == targets).float().mean()), 4)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--budget", type=float, default=50.0)
    p.add_argument("--decays", default="0.9,0.95,0.98")
    a = p.parse_args()
    averages = _Averages([float(d) for d in a.decays.split(",")])
    learn = easycls.fit(a.data, out=a.out, arch="resnet18", pretrained=False, size=64,
                        quiet=True, time_budget=a.budget, cbs=[averages])
    out = {"final_weights": _accuracy(learn)}
    trained = copy.deepcopy(learn.model.state_dict())
    for decay, ema in averages.emas.items():
        learn.model.load_state_dict(ema.module.state_dict())  # weights and BN statistics
        out[f"ema_{decay}"] = _accuracy(learn)
    learn.model.load_state_dict(trained)
    print(json.dumps(out | {"load": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
