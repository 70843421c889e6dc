"""Wall-time budgets: plan the number of epochs from measured step times.

`TimeBudget` rides on a one-cycle fit started with a generous epoch count. It sets
`learn.n_epoch` (which fastai's `TrainEvalCallback` and `ParamScheduler` read through
`pct_train`) to the epochs that fit the budget, re-plans at each epoch end from the
measured epoch time, and stops the fit cleanly when the planned count is reached, so
the schedule always completes and validation and the run directory still get written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastai.callback.core import Callback, CancelFitException

__all__ = ["TimeBudget", "UNBOUNDED_EPOCHS"]

# Loop bound handed to `fit_one_cycle` under a budget; `TimeBudget` stops it far sooner.
UNBOUNDED_EPOCHS = 100_000

class TimeBudget(Callback):
    """Fit as many one-cycle epochs as end within `seconds` of wall time since `t_start`.

    `reserve` seconds are kept for the final evaluation and writing the run directory (the
    measured validation time is added to it). `agree` makes every process use rank 0's plan.
    """

    order = 55  # before SkipToEpoch (70); after TrainEvalCallback (-10) has counted the batch

    def __init__(self, seconds: float, t_start: float, first_guess: int, *, reserve: float = 2.0,
                 probe_batches: int = 4, agree: Callable = lambda v: v):
        self.seconds, self.t_start, self.planned = seconds, t_start, max(1, first_guess)
        self.reserve, self.probe, self.agree = reserve, probe_batches, agree
        self.valid_seconds, self.replans = None, 0

    def _left(self) -> float:
        used = time.perf_counter() - self.t_start
        return self.seconds - used - self.reserve - (self.valid_seconds or 0.0)

    def _set_plan(self, done: float, epoch_seconds: float) -> None:
        planned = max(math.ceil(done) or 1, int(done + self._left() / max(epoch_seconds, 1e-6)))
        planned = self.agree(planned)
        if planned != self.planned:
            self.replans += 1
        self.planned = planned
        self.learn.n_epoch = planned

    def before_epoch(self):
        self.learn.n_epoch = self.planned
        if self.epoch >= self.planned:
            raise CancelFitException()
        self._t_epoch, self._full = time.perf_counter(), True

    def after_cancel_epoch(self):
        self._full = False  # skipped by a resume: no timing to learn from

    def before_train(self):
        self._t_probe = None
        self._full = self._full and not getattr(self.learn.dl, "skip", 0)

    def after_batch(self):
        if not self.training:
            return
        if self.iter == 0:
            # The first batch pays for warm-up; time the next ones.
            self._t_probe = time.perf_counter()
        elif self.iter == self.probe and self._t_probe is not None and self.valid_seconds is None:
            step = (time.perf_counter() - self._t_probe) / self.probe
            n_valid = len(self.dls.valid.dataset) / max(1, len(self.dls.train.dataset))
            # Validation is a forward pass only: about half a training step per image.
            epoch = step * self.n_iter * (1 + 0.5 * n_valid)
            self._set_plan(self.epoch + (self.iter + 1) / self.n_iter, epoch)
            self.learn.pct_train = (self.epoch + (self.iter + 1) / self.n_iter) / self.planned

    def before_validate(self):
        self._t_valid = time.perf_counter()

    def after_validate(self):
        self.valid_seconds = time.perf_counter() - self._t_valid

    def after_epoch(self):
        if self._full:
            self._set_plan(self.epoch + 1, time.perf_counter() - self._t_epoch)
