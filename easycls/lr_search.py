"""The learning rate: a robust default for the mode, or fastai's `lr_find` bounded to a share of
the run.

fastai's `lr_find` trains 100 mini-batches. On a short run that is more than the training
itself, so by default the search may spend at most `SEARCH_SHARE` of the planned training
steps, over a narrow range around the mode's default lr; when that share is too few
iterations to read a loss curve from, the default lr is used without a search. A full
search (`lr="find"`) is fastai's own `lr_find`. Suggestions that disagree with each other or
fall far from the default are not trusted (the default is used, and the summary says so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from fastai.callback.schedule import minimum, slide, valley

__all__ = ["LrChoice", "default_lr", "search_iterations", "robust_lr", "choose_lr", "SEARCH_SHARE",
           "MIN_SEARCH_ITERS", "FULL_SEARCH_ITERS"]

SEARCH_SHARE = 0.05      # most of the planned training steps a default search may take
MIN_SEARCH_ITERS = 16    # fewer points than this give no readable loss curve
FULL_SEARCH_ITERS = 100  # fastai's lr_find default
_SPAN = 100.0            # a bounded search sweeps default / _SPAN .. default * _SPAN
# suggestions further than this from the default, or from each other, are noise
_TRUST = 10.0

# Adam (fastai's default optimizer) at a total batch of 64: fastai's `fine_tune` base lr
# for pretrained bodies; a higher one from scratch, where short one-cycle runs gain from it.
_BASE_LR = {True: 2e-3, False: 8e-3}
_BASE_BS = 64


@dataclass
class LrChoice:
    """The lr a run trains with, how it was chosen, and what choosing it cost."""

    lr: float
    how: str              # "given", "default", "search" (bounded) or "full search"
    seconds: float = 0.0
    iterations: int = 0
    note: str = ""

    def summary(self) -> str:
        """One line for the run's output, e.g. `lr 8.00e-03 (default for training from scratch
        ...)`."""
        cost = f", {self.iterations} iterations, {self.seconds:.1f} s" if self.iterations else ""
        note = f"; {self.note}" if self.note else ""
        return f"lr {self.lr:.2e} ({self.how}{cost}{note})"


def default_lr(fine_tune: bool, total_bs: int) -> float:
    """Adam's lr for the mode, scaled by the square root of the total batch (all processes).

    Example:
        >>> default_lr(fine_tune=False, total_bs=64)
        0.008
    """
    return _BASE_LR[bool(fine_tune)] * math.sqrt(max(1, total_bs) / _BASE_BS)


def search_iterations(planned_steps: int, share: float = SEARCH_SHARE) -> int:
    """Iterations a default search may take: `share` of the planned steps, at most fastai's
    100; 0 (no search) when that is under `MIN_SEARCH_ITERS`."""
    n = min(FULL_SEARCH_ITERS, int(planned_steps * share))
    return n if n >= MIN_SEARCH_ITERS else 0


def robust_lr(suggestions: list[float], default: float) -> tuple[float, str]:
    """The median of the finite suggestions when they agree within `_TRUST`x of each other and
    of `default`; else `default`, with a note saying why."""
    ok = sorted(s for s in suggestions if s is not None and math.isfinite(s) and s > 0)
    if not ok:
        return default, "search found no usable lr, default used"
    lr = float(np.exp(np.median(np.log(ok))))
    if ok[-1] / ok[0] > _TRUST:
        return default, f"suggestions {ok[0]:.1e}..{ok[-1]:.1e} disagree, default used"
    if not default / _TRUST <= lr <= default * _TRUST:
        return default, f"search suggested {lr:.1e}, far from the default, default used"
    return lr, ""


def _suggestions(result) -> list[float]:
    return [float(v) for v in result] if result is not None else []


def choose_lr(learn, *, lr: float | str | None, fine_tune: bool, total_bs: int, planned_steps: int,
              alone: Callable = nullcontext, agree: Callable = lambda v: v,
              clock: Callable[[], float] = time.perf_counter) -> LrChoice:
    """The lr to train `learn` with.

    `lr` given as a number is used as is; `"find"` runs fastai's full `lr_find`; None runs
    a search of at most `search_iterations(planned_steps)` iterations, or none. `alone`
    (a context) lets each process probe on its own; `agree` makes every process use rank
    0's lr, so all train alike.

    Example:
        >>> choose_lr(learn, lr=None, fine_tune=False, total_bs=64, planned_steps=66).how
        'default'
    """
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return LrChoice(float(lr), "given")
    default = default_lr(fine_tune, total_bs)
    mode = "fine-tuning" if fine_tune else "training from scratch"
    full = lr == "find"
    n = FULL_SEARCH_ITERS if full else search_iterations(planned_steps)
    if n == 0:
        return LrChoice(default, f"default for {mode}, batch {total_bs}",
                        note=f"a search would take over {SEARCH_SHARE:.0%} of the training")
    t0 = clock()
    span = (
        dict(start_lr=1e-7, end_lr=10)
        if full
        else dict(start_lr=default / _SPAN, end_lr=default * _SPAN)
    )
    with alone():
        found = learn.lr_find(
            num_it=n, show_plot=False, suggest_funcs=(valley, slide, minimum), **span
        )
    values = _suggestions(found)
    if values:
        values[-1] /= 10  # fastai's `minimum` is where the loss is lowest; a tenth of it trains
    chosen, note = (values[0], "") if full and values else robust_lr(values, default)
    done = len(getattr(getattr(learn, "recorder", None), "lrs", None) or ()) or n  # stops early
    return LrChoice(float(agree(chosen)), "full search" if full else "search", clock() - t0, done,
                    note)
