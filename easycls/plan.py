"""Defaults that depend on the data and the run: the batch size and the augmentation a
short run needs.

A from-scratch run learns per optimizer step, not per image: on a small dataset a batch of
64 leaves a few dozen steps an epoch, and on a CPU a smaller batch costs about the same
per image (docs/performance.md). So the default batch is the largest power of two, up to
`MAX_BS`, that still gives each epoch `MIN_STEPS` steps, across all processes.

Augmentation fights overfitting, which a short run from scratch does not reach: there it
only makes the task harder and the model later (docs/performance.md measures both sides).
So by default it is on when fine-tuning (pretrained weights overfit small data fast) and
for runs of `AUGMENT_FROM_EPOCHS` epochs or more; under a time budget from scratch the
epoch count is only known while training, so it is decided live (`None` here).
"""

from __future__ import annotations

__all__ = ["default_bs", "default_augment", "AUGMENT_FROM_EPOCHS", "MAX_BS", "MIN_BS",
           "MIN_STEPS"]

MAX_BS = 64     # per process: the long-standing default, fine on large datasets
MIN_BS = 16     # below this, batch-norm statistics get noisy
MIN_STEPS = 40  # optimizer steps per epoch a short run should get
AUGMENT_FROM_EPOCHS = 10  # from scratch, augmentation pays from about here


def default_bs(n_train: int, world_size: int = 1) -> int:
    """Per-process batch size for `n_train` training images over `world_size` processes.

    Example:
        >>> default_bs(1392), default_bs(100_000), default_bs(1392, world_size=2)
        (32, 64, 16)
    """
    bs = MAX_BS
    while bs > MIN_BS and n_train / (bs * max(1, world_size)) < MIN_STEPS:
        bs //= 2
    return bs


def default_augment(augment: bool | None, *, fine_tune: bool, epochs: int,
                    time_budget: float | None) -> bool | None:
    """Whether to augment: as given, else on when fine-tuning or for `AUGMENT_FROM_EPOCHS`+
    epochs; `None` (decided live from the planned epochs) under a time budget from scratch.

    Example:
        >>> default_augment(None, fine_tune=False, epochs=3, time_budget=None)
        False
        >>> default_augment(None, fine_tune=True, epochs=3, time_budget=None)
        True
    """
    if augment is not None:
        return augment
    if fine_tune:
        return True
    return None if time_budget else epochs >= AUGMENT_FROM_EPOCHS
