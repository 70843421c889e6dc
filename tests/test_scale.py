"""Reading a layout, splitting and the labelled test split grow linearly with the rows.

A listing of 10,000 and of 100,000 paths (no pixels) goes through what `fit` does before
it reads an image. Quadratic work (once: rebuilding the class set per test item) shows as
a ratio near 100; the bound of 30 catches that without failing on a noisy machine.
`benchmarks/table_scale.py` prints the step-by-step figures (about 10x for 10x rows).
"""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from table_scale import listing, steps  # noqa: E402


def _cpu(n: int) -> float:
    files = listing(n)
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        steps(files)
        best = min(best, time.process_time() - t)
    return best


@pytest.mark.slow
def test_labelling_and_splitting_are_linear():
    small, large = _cpu(10_000), _cpu(100_000)
    assert large / small < 30, (small, large)
