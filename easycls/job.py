"""The facts of this machine and job, and the group of processes that work on it together.

A leaf: it imports nothing of torch or of the rest of easycls, so the data layer can take a
:class:`Group` as an argument without knowing how processes are launched or joined
(``distributed.Session`` is the group of a launched job; :data:`ONE` the group of one
process).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Group", "ONE", "share"]


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
