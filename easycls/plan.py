"""Defaults that depend on the data: the batch size a short run needs.

A from-scratch run learns per optimizer step, not per image: on a small dataset a batch of
64 leaves a few dozen steps an epoch, and on a CPU a smaller batch costs about the same
per image (docs/performance.md). So the default batch is the largest power of two, up to
`MAX_BS`, that still gives each epoch `MIN_STEPS` steps, across all processes.
"""

from __future__ import annotations

__all__ = ["default_bs", "MAX_BS", "MIN_BS", "MIN_STEPS"]

MAX_BS = 64     # per process: the long-standing default, fine on large datasets
MIN_BS = 16     # below this, batch-norm statistics get noisy
MIN_STEPS = 40  # optimizer steps per epoch a short run should get


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
