"""The facts of this machine and job, and the group of processes that work on it together.

A leaf: it imports nothing of torch or of the rest of easycls. The data layer takes a
:class:`Group` as an argument and never knows how processes are launched or joined
(``distributed.Session`` is the group of a launched job; :data:`ONE` the group of one
process). The job's facts come from what launchers set (``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``) and from the affinity mask (fastcore's ``num_cpus``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from fastcore.basics import num_cpus

__all__ = ["Group", "ONE", "share", "world_size", "local_world_size", "worker_budget",
           "environ_set"]


def world_size() -> int:
    """Processes in this job: fastai's ``num_distrib`` (``WORLD_SIZE``, set by torchrun and
    accelerate), at least 1."""
    from fastai.torch_core import num_distrib  # here: this module stays free of torch
    return max(1, num_distrib())


def local_world_size() -> int:
    """Processes of this job on this machine (torchrun and accelerate set LOCAL_WORLD_SIZE;
    without it, all ranks are taken as local, which never oversubscribes the cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or world_size())


def worker_budget(cores: int | None = None, local_world: int | None = None) -> int:
    """Loader workers per process: the machine's cores shared by its processes, one core of
    each share left to the process's own training loop; at least 1, at most 16.

    Example:
        >>> worker_budget(cores=16, local_world=8)   # not 8 ranks x 15 workers on 16 cores
        1
    """
    n = (num_cpus() or 1) if cores is None else cores  # the affinity mask's cores
    each = n // max(1, local_world if local_world is not None else local_world_size())
    return min(16, max(1, each - 1))


@contextmanager
def environ_set(**values: str) -> Iterator[None]:
    """Inside, these environment variables have these values; after, each is as it was
    (set back, or removed). Only the names given are touched, unlike fastcore's
    ``modified_env``, which refills all of ``os.environ`` that other threads may be reading."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@runtime_checkable
class Group(Protocol):
    """The processes that prepare one run's data together.

    Attributes:
        rank, size: this process's place among all of them, and how many there are.
        local_rank, local_size: the same among those on this machine (they share its disk).
    """

    rank: int
    size: int
    local_rank: int
    local_size: int

    def barrier(self) -> None:
        """Wait until every process gets here."""

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process."""

    def gather(self, value: Any) -> list:
        """Every process's ``value``, in rank order, on every process."""


class _OneProcess:
    """The group of a process that works alone."""

    rank = local_rank = 0
    size = local_size = 1

    def barrier(self) -> None:
        return None

    def broadcast(self, value: Any) -> Any:
        return value

    def gather(self, value: Any) -> list:
        return [value]


ONE: Group = _OneProcess()


def share(n: int, part: int, parts: int) -> range:
    """Part ``part`` of ``parts`` contiguous, near-equal shares of ``n`` work items.

    Example:
        >>> share(5, 1, 2)
        range(2, 5)
    """
    return range(n * part // parts, n * (part + 1) // parts)

