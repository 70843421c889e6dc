"""Training-step overhead of easycls's Learner against a plain PyTorch loop (issue 2).

Same timm model (fresh copy with the same initial weights), batch size, in-memory batches
and precision (fp32 on CPU). The Learner is built the way `fit` builds it
(`single_label_learner`, fastai's Adam, the `PlainTensors` callback, fastai tensor
subclasses on the batches); the plain loop uses `torch.optim.Adam` with the same lr and
betas. Runs alternate in one process; we report the ratio of the medians.

    python benchmarks/overhead.py --arch resnet18 --size 64 --bs 64 --steps 20 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from statistics import median

import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.torch_core import TensorCategory, TensorImage

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine_conditions  # noqa: E402

from easycls.callbacks import PlainTensors  # noqa: E402
from easycls.learners import create_model, single_label_learner  # noqa: E402


class _TrainClock(Callback):
    """Seconds spent in the training phase of each epoch (validation excluded)."""

    def before_train(self):
        self.t = time.perf_counter()

    def after_train(self):
        self.seconds = time.perf_counter() - self.t


def batches(n: int, bs: int, size: int, n_classes: int) -> list:
    g = torch.Generator().manual_seed(0)
    return [(TensorImage(torch.randn(bs, 3, size, size, generator=g)),
             TensorCategory(torch.randint(0, n_classes, (bs,), generator=g))) for _ in range(n)]


def learner_rate(model, data: list, lr: float) -> float:
    """Images/s of one `fit` epoch's training phase over `data` (already-made batches)."""
    # bs=None: fastai hands each stored batch through unchanged (no collation)
    dls = DataLoaders(DataLoader(data, bs=None), DataLoader(data[:1], bs=None), device="cpu")
    clock = _TrainClock()
    learn = single_label_learner(
        dls, model, n_out=10, pretrained=False, cbs=[PlainTensors(), clock]
    )
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *a, **k: None
    learn.fit(1, lr)
    return sum(len(x) for x, _ in data) / clock.seconds


def plain_rate(model, data: list, lr: float) -> float:
    """Images/s of the textbook loop over the same batches (plain tensors)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    plain = [(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)) for x, y in data]
    model.train()
    t = time.perf_counter()
    for x, y in plain:
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return sum(len(x) for x, _ in plain) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.manual_seed(0)
    base = create_model(a.arch, 10, pretrained=False)
    data = batches(a.steps, a.bs, a.size, 10)
    before = machine_conditions()
    plain_rate(copy.deepcopy(base), data[:2], a.lr)  # warm-up: allocator, kernels
    rates = alternate({"learner": lambda: learner_rate(copy.deepcopy(base), data, a.lr),
                       "plain": lambda: plain_rate(copy.deepcopy(base), data, a.lr)}, a.rounds)
    med = {k: median(v) for k, v in rates.items()}
    result = dict(args=vars(a), before=before, after=machine_conditions(), images_per_s=rates,
                  median=med, learner_over_plain=med["learner"] / med["plain"])
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
