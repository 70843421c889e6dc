"""Data-dependent defaults: the batch size gives short runs enough optimizer steps."""

from __future__ import annotations

from easycls.plan import MAX_BS, MIN_BS, MIN_STEPS, default_bs


def test_default_batch_gives_small_datasets_enough_steps_per_epoch():
    assert default_bs(1392) == 32 and 1392 // 32 >= MIN_STEPS
    assert default_bs(500) == MIN_BS  # never below the floor, even when steps stay few
    assert default_bs(100_000) == MAX_BS


def test_default_batch_counts_every_process():
    assert default_bs(1392, world_size=2) == 16
    assert default_bs(100_000, world_size=8) == MAX_BS
