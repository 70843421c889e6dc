"""One file lock for every builder (decoded cache, compact store, built-in datasets).

An exclusive ``flock`` is released by the kernel when its holder dies, so a crashed build
never blocks the next one. Waiting is bounded: a process that waits reports how long it
has waited and gives up with :class:`LockTimeout` (``$EASYCLS_LOCK_TIMEOUT`` seconds,
default two hours) instead of hanging a multi-node job forever.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .items import DataError

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builders are then unsupported
    fcntl = None

__all__ = ["LockTimeout", "lock_timeout", "locked", "open_or_build"]

_DEFAULT_TIMEOUT = 2 * 3600.0
_REPORT_EVERY = 60.0
_POLL = 0.25


class LockTimeout(DataError, TimeoutError):
    """Another process held a build lock for longer than the allowed wait."""


def lock_timeout() -> float:
    """Seconds to wait for another builder: ``$EASYCLS_LOCK_TIMEOUT``, else two hours."""
    return float(os.environ.get("EASYCLS_LOCK_TIMEOUT") or _DEFAULT_TIMEOUT)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _try_lock(f) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str = "a build", timeout: float | None = None,
           say: Callable[[str], None] | None = _say,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; wait for it at most ``timeout`` seconds.

    Args:
        path: the lock file (created if absent, never deleted: deleting it would let
            a third process lock a different inode).
        what: what the holder is doing, for the messages.
        timeout: seconds (default :func:`lock_timeout`).
        say: where progress lines go (None: silent).
        clock, sleep: injectable for tests.

    Raises:
        LockTimeout: still locked after ``timeout`` seconds.

    Example:
        >>> with locked("/tmp/x.lock", "building the cache"):
        ...     pass
    """
    timeout = lock_timeout() if timeout is None else timeout
    say = say or (lambda msg: None)
    with open(Path(path), "a+b") as f:
        if fcntl is not None:
            _wait(f, path, what, timeout, say, clock, sleep)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _wait(f, path, what, timeout, say, clock, sleep) -> None:
    start = clock()
    next_report = 0.0
    while not _try_lock(f):
        waited = clock() - start
        if waited >= timeout:
            raise LockTimeout(
                f"gave up after {waited:.0f} s waiting for another process doing {what} "
                f"(lock {path}); if no other easycls process is running, the lock holder is "
                "stuck: stop it, or raise EASYCLS_LOCK_TIMEOUT (seconds)")
        if waited >= next_report:
            say(f"waiting for another process doing {what} ({waited:.0f} s; lock {path})")
            next_report = waited + _REPORT_EVERY
        sleep(_POLL)


def open_or_build(lock_path: str | os.PathLike, what: str, open_fn: Callable,
                  build_fn: Callable):
    """`open_fn()` if it finds a finished build, else `build_fn()` under the lock at
    `lock_path`, looking again once the lock is held: another process may have finished
    the build while this one waited, and then it is opened, not built twice."""
    found = open_fn()
    if found is not None:
        return found
    with locked(lock_path, f"building the {what}"):
        found = open_fn()
        return found if found is not None else build_fn()
