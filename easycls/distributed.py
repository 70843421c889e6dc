"""The only module that knows about processes (and the only one that imports accelerate).

`Session` tells the rest of the code where to run and what to add; callers never test
ranks themselves: they ask for `session.main_only(callbacks)` or `session.on_main(fn)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Session", "session", "world_size"]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Session:
    """Process context of one run: device, rank, and the callbacks that make training distributed."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only(self, items: list) -> list:
        """`items` on rank 0, nothing elsewhere (file writers, loggers, progress bars)."""
        return list(items) if self.is_main else []

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 only, then let every rank continue together."""
        result = fn() if self.is_main else None
        self.barrier()
        return result

    def barrier(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def train_callbacks(self) -> list:
        return []


def session(cpu: bool | None = None) -> Session:
    """The session of this process; single-process unless started by a launcher."""
    use_cuda = torch.cuda.is_available() and not cpu
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    return Session(int(os.environ.get("RANK", 0)), world_size(), device)
