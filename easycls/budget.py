"""Wall-time budgets: plan the epochs and drive the one-cycle schedule so the run ends in time.

`TimeBudget` rides on a one-cycle fit started with a generous epoch count. It sets
`learn.n_epoch` to the epochs that fit the budget, re-plans at each epoch end from the
measured epoch time, and owns `learn.pct_train` (the position fastai's `ParamScheduler`
reads): after every batch the position moves on by an equal share of what is left of the
schedule over the steps left in the plan, and never falls behind the share of the training
time already spent. So the schedule always completes (warm-up, peak, anneal), and when the
machine slows down the schedule is compressed instead of the deadline being missed: once
the position reaches the end, the epoch's training stops early, its validation runs, and the
fit ends. The final evaluation, the run directory and predictions on a test split are paid
for from a reserve measured on the run itself (the validation pass's time per image).

Under several processes the decisions are rank 0's (`agree`), taken every `check_every`
batches so every rank stops at the same batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastai.callback.core import Callback, CancelFitException, CancelTrainException

__all__ = ["TimeBudget", "UNBOUNDED_EPOCHS", "budget_origin", "counting_from_process_start"]

# Loop bound handed to `fit_one_cycle` under a budget; `TimeBudget` stops it far sooner.
UNBOUNDED_EPOCHS = 100_000

_from_process_start = False


@contextmanager
def counting_from_process_start() -> Iterator[None]:
    """Within this block, budgets count from the process's start, not from the `fit` call.

    The CLI's `fit` runs in it: a user who types `easycls fit --time-budget 2m` times the
    command, imports included. In Python, a budget counts from the call to `fit`; so does a
    later `fit` in a process that ran the CLI in-process before (a notebook, a test).
    """
    global _from_process_start
    before, _from_process_start = _from_process_start, True
    try:
        yield
    finally:
        _from_process_start = before


def budget_origin(t_call: float) -> float:
    """The `time.perf_counter()` instant a budget counts from, given the `fit` call's."""
    if not _from_process_start:
        return t_call
    return min(t_call, time.perf_counter() - max(0.0, process_age()))


def process_age() -> float:
    """Seconds since this process started.

    On Linux: its start tick in `/proc/self/stat` against the boot clock, to the tick
    (10 ms). psutil's `create_time` adds the boot time that `/proc/stat` gives in whole
    seconds, so its age is up to a second too long: a budget would lose that second.
    """
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return time.time() - psutil.Process().create_time()


class TimeBudget(Callback):
    """Train the one-cycle steps that end within `seconds` of wall time since `t_start`.

    The plan is a number of optimizer steps, not of epochs: the last epoch may be cut short
    so the budget is spent training rather than left over. `reserve` seconds are kept for
    writing the run directory; a final validation pass (`final_pass`: the caller does not
    reuse the last epoch's) and the prediction of `tail_items` test images are added to it
    at the measured validation speed. `agree` makes every process use rank 0's plan and
    clock. `max_epochs` caps the plan: a fixed amount of work that the budget only
    shortens when the machine is too slow for it.
    """

    order = 55  # after TrainEvalCallback (-10) has counted the batch; before SkipToEpoch (70)

    def __init__(self, seconds: float, t_start: float, first_guess: int, *, reserve: float = 2.0,
                 probe_batches: int = 4, tail_items: int = 0, check_every: int = 1,
                 agree: Callable = lambda v: v, final_pass: bool = True,
                 max_epochs: int | None = None):
        self.max_epochs = max_epochs
        self.seconds, self.t_start, self.planned = seconds, t_start, max(1, first_guess)
        self.reserve, self.probe, self.agree = reserve, probe_batches, agree
        self.tail_items, self.check_every = tail_items, max(1, check_every)
        self.final_pass = final_pass
        self.valid_seconds, self.replans, self.ended_early = None, 0, False
        self.planned_steps: int | None = None
        self._measured = False  # a plan from measured steps exists (not the first guess)
        self._p = self._p0 = self._t_train0 = None
        self._finished, self._n = False, 1

    # time accounting ---------------------------------------------------------------------
    def _valid_pass(self, step: float | None = None) -> float:
        """Seconds of one validation pass: measured, else a forward pass only, about half a
        training step's time an image."""
        if self.valid_seconds is not None:
            return self.valid_seconds
        ratio = len(self.dls.valid.dataset) / max(1, len(self.dls.train.dataset))
        return 0.5 * (step or 0.0) * self._n * ratio

    def _tail(self, step: float | None = None) -> float:
        """Seconds needed after training: final evaluation (unless the last epoch's
        validation is reused), test predictions, the run directory."""
        valid = self._valid_pass(step)
        per_image = valid / max(1, len(self.dls.valid.dataset))
        return self.reserve + valid * self.final_pass + per_image * self.tail_items

    def _left(self, step: float | None = None) -> float:
        used = time.perf_counter() - self.t_start
        return self.seconds - used - self._tail(step)

    def _plan_steps(self, done: int, step: float) -> int:
        """Steps (counted from the fit's start) that end in time from `done`, at `step` s a step.

        Every epoch begun costs a validation pass; the last epoch is cut short when the time
        left cannot pay for all of it, and dropped when under a tenth of it would train.
        """
        n, valid = self._n, self._valid_pass(step)
        left = self._left(step)
        rest = (-done) % n  # steps left in the epoch under way
        if rest:
            if left < rest * step + valid:  # not even this epoch: stop early in it
                return done + max(0, int((left - valid) / max(step, 1e-9)))
            left -= rest * step + valid
        full = int(left // (n * step + valid)) if left > 0 else 0
        partial = int((left - full * (n * step + valid) - valid) / max(step, 1e-9))
        partial = partial if partial >= max(1, n // 10) else 0
        return done + rest + full * n + partial

    def _set_plan(self, done: int, step: float) -> None:
        steps = max(done + 1 if done % self._n else done, self._plan_steps(done, step))
        if self.max_epochs:
            steps = min(steps, max(done, self.max_epochs * self._n))
        steps = self.agree(max(1, steps))
        planned = max(1, math.ceil(steps / self._n))
        if steps != self.planned_steps:
            self.replans += self.planned_steps is not None
        self.planned_steps, self.planned, self._measured = steps, planned, True
        self.learn.n_epoch = planned

    def _position(self) -> int:
        """Training steps done in this fit, counting the epochs a resume skipped."""
        return self.epoch * self._n + self.iter + 1

    # fastai events ------------------------------------------------------------------------
    def before_fit(self):
        self._p = self._p0 = self._t_train0 = None
        self._finished = False

    def before_epoch(self):
        self.learn.n_epoch = self.planned
        if self._finished or self.epoch >= self.planned:
            raise CancelFitException()
        self._full = True

    def after_cancel_epoch(self):
        self._full = False  # skipped by a resume: no timing to learn from

    def before_train(self):
        self._t_probe, self._t_epoch = None, time.perf_counter()
        self._full = self._full and not getattr(self.learn.dl, "skip", 0)
        if self._t_train0 is None:
            self._t_train0 = self._t_epoch
        if self.planned_steps is None:  # `n_iter` is set once this event has run
            self.planned_steps = self.planned * len(self.dl)
        if self._p is not None:  # fastai resets it to epoch / n_epoch: keep the schedule's
            self.learn.pct_train = self._p

    def after_batch(self):
        if not self.training:
            return
        self._n = self.n_iter  # the training epoch's batches (validation sets its own n_iter)
        if self._p is None:  # first batch of the fit: start from fastai's (or a resume's) place
            self._p = self._p0 = self.learn.pct_train - 1.0 / (self.n_iter * self.n_epoch)
        if self.iter == 0:
            self._t_probe = time.perf_counter()  # the first batch pays for warm-up
        elif self._probing():
            # Until the first validation, re-planned every eighth of the epoch from the
            # steps so far: the first ones run slow (warm-up), and a plan that stays short
            # would end the schedule early and leave the budget unused.
            self._set_plan(self._position(), (time.perf_counter() - self._t_probe) / self.iter)
        self._advance()

    def _probing(self) -> bool:
        if self._t_probe is None or self.valid_seconds is not None or self.iter < self.probe:
            return False
        return (self.iter - self.probe) % max(self.probe, self.n_iter // 8) == 0

    def _advance(self) -> None:
        """Move the schedule one step: an equal share of what is left, or the time spent."""
        steps_left = self.planned_steps - self._position()
        p = self._p + (1.0 - self._p) / max(1, steps_left + 1)
        # The clock only once a measured plan exists: the first batches (warm-up) would
        # make the budget look spent.
        if steps_left > 0 and self._measured and (self.iter + 1) % self.check_every == 0:
            p = max(p, self._p0 + (1.0 - self._p0) * self.agree(self._time_share()))
        self._p = 1.0 if steps_left <= 0 else min(1.0, p)
        self.learn.pct_train = self._p
        if self._p < 1.0:
            return
        self.ended_early = steps_left > 0  # out of time before the plan's last step
        if self.iter + 1 < self.n_iter:
            # The schedule has ended inside an epoch: its training stops here, its
            # validation runs, and the fit ends.
            self._finished = True
            self.planned = self.learn.n_epoch = self.epoch + 1
            raise CancelTrainException()

    def _time_share(self) -> float:
        """The share of this process's training time spent, counting the validations the
        plan still has to run as not available for training."""
        now = time.perf_counter()
        validations = self.planned - self.epoch  # this epoch's and the later ones'
        step = (now - self._t_train0) / max(1, self.train_iter)
        end = (self.t_start + self.seconds - self._tail(step)
               - validations * self._valid_pass(step))
        return (now - self._t_train0) / max(end - self._t_train0, 1e-6)

    def before_validate(self):
        self._t_valid = time.perf_counter()
        self._train_seconds = self._t_valid - self._t_epoch

    def after_validate(self):
        self.valid_seconds = time.perf_counter() - self._t_valid

    def after_epoch(self):
        if self._p is not None and self._p >= 1.0:
            self._finished = True  # the schedule is complete: no epoch can follow
        elif self._full:
            self._set_plan((self.epoch + 1) * self._n, self._train_seconds / self._n)
