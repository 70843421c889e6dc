"""A run directory belongs to one run: an exclusive lock held for the life of the run.

The lock is ``DIR/.easycls.lock``, an ``flock`` held on an open file that also records who holds
it (pid, host, start time, command). The kernel drops an ``flock`` when its process dies, however
it dies, so a lock left behind by a killed run is stale and simply taken over. Where ``flock`` is
not available, the record decides: a lock whose process is gone from this host is stale; one held
from another host is respected (the message says which file to remove if that run is gone).

`claim` also refuses a directory that holds another run's files, unless the run is resumed or
``overwrite`` is given. An overwrite never loses the old run before the new one exists: once every
check has passed, `RunLock.set_aside` moves the old files into ``DIR/.easycls-replaced`` (renames,
so their bytes are untouched); `RunLock.started` removes them when the new run first writes. A run
that fails before that puts them back, and a run killed before that has them put back by the next
claim.

Example:
    >>> with claim("runs/pets", resume=False, overwrite=False):   # doctest: +SKIP
    ...     train()
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import UserError
from .job import Group

try:
    import fcntl
except ImportError:  # Windows: no flock; the pid/host record alone decides
    fcntl = None

__all__ = ["LOCK_NAME", "REPLACED_NAME", "RUN_FILES", "RUN_LOGS", "RunLockError", "RunLock",
           "claim", "claim_together", "run_files", "try_flock", "release_flock"]

LOCK_NAME = ".easycls.lock"
REPLACED_NAME = ".easycls-replaced"  # an overwritten run's files until the new run writes
# Files a run writes into its directory (plots, reports and predictions included).
RUN_FILES = ("config.json", "checkpoint.pth", "history.csv", "metrics.json", "model.json",
             "model.safetensors", "skipped.txt", "loss.png", "confusion_matrix.png",
             "f1_threshold.png", "per_class.csv", "test_predictions.csv", "trackers.json")
# What the trackers (`--log`) write into the run directory: an overwrite sets them aside with
# the run's files, so the new run's logs do not mix with the old one's; they do not make a
# folder count as a run (wandb also writes ./wandb into a working directory of its own).
RUN_LOGS = ("log.csv", "tensorboard", "wandb")
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLockError(UserError, RuntimeError):
    """The run directory is in use by another run, or holds another run's files."""


def _record() -> dict:
    return dict(pid=os.getpid(), host=socket.gethostname(),
                started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                command=shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300])


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')} "
            f"({owner.get('command')})")


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale(owner: dict) -> bool:
    """A record whose process is gone (decidable only on this host)."""
    return owner.get("host") == socket.gethostname() and not _alive(owner.get("pid"))


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def try_flock(fd: int) -> bool | None:
    """Take an exclusive ``flock`` on ``fd`` without waiting: the one file-lock primitive of
    easycls (run directories here, cache builds in ``data/cachedir.py``).

    Returns:
        True: locked; False: another process holds it; None: this system or filesystem
        cannot ``flock`` (the caller decides what then protects it).
    """
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return None
        raise
    return True


def release_flock(fd: int) -> None:
    """Give back a lock that :func:`try_flock` took."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """The lock of one run directory; `acquire` raises `RunLockError` naming the holder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None
        self.stale: dict = {}  # the record of a dead run whose lock was taken over

    def acquire(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunLockError(f"{self.run_dir} is a file, not a folder: choose another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                self.fd = self._take(fd)
            except BaseException:
                os.close(fd)
                raise
        return self

    def _take(self, fd: int) -> int | None:
        got, owner = try_flock(fd), _read(fd)
        if got is False or (got is None and owner and not _stale(owner)):
            raise RunLockError(f"{self.run_dir} is in use by another easycls run: "
                               f"{_describe(owner)}. Wait for it to finish, or choose another "
                               f"--out (if that run is gone, remove {self.path})")
        if not self._still_linked(fd):  # the holder removed it while we waited: take the new one
            os.close(fd)
            return None
        self.stale = owner
        data = json.dumps(_record()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return fd

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file and let go of it (also done by the kernel if the process dies)."""
        if self.fd is None:
            return
        try:
            if self._still_linked(self.fd):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    @property
    def replaced(self) -> Path:
        return self.run_dir / REPLACED_NAME

    def set_aside(self) -> list[str]:
        """Move the old run's files into `replaced` (call once every check has passed)."""
        found = run_files(self.run_dir)
        if found:
            found += [f for f in RUN_LOGS if (self.run_dir / f).exists()]
            self.replaced.mkdir(exist_ok=True)
        for name in found:
            os.replace(self.run_dir / name, self.replaced / name)
        return found

    def restore(self) -> None:
        """Put set-aside files back where the new run has not written its own."""
        if not self.replaced.is_dir():
            return
        for old in self.replaced.iterdir():
            if not (self.run_dir / old.name).exists():
                os.replace(old, self.run_dir / old.name)
        shutil.rmtree(self.replaced, ignore_errors=True)

    def started(self) -> None:
        """The new run writes from now on: the set-aside files of the old one go."""
        shutil.rmtree(self.replaced, ignore_errors=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of a run that `run_dir` holds (see RUN_FILES)."""
    return [f for f in RUN_FILES if (Path(run_dir) / f).exists()]


@contextmanager
def claim(run_dir: str | os.PathLike, *, resume: bool = False,
          overwrite: bool = False) -> Iterator[RunLock]:
    """Hold `run_dir`'s lock while inside; refuse another run's files unless resumed or overwritten.

    With `overwrite`, the caller moves the old files away with `lock.set_aside()` once its checks
    pass and calls `lock.started()` before its first write; leaving before that (an error, a
    signal) puts the old files back.

    Raises:
        RunLockError: another run holds the directory, or it holds another run's files.
    """
    with RunLock(run_dir) as lock:
        lock.restore()  # what an overwrite killed before it wrote had set aside
        found = run_files(run_dir)
        if found and not resume and not overwrite:
            raise RunLockError(
                f"{run_dir} holds the files of another run ({', '.join(found[:4])}"
                f"{', ...' if len(found) > 4 else ''}): continue it with --resume {run_dir}, "
                "replace it with --overwrite, or choose another --out")
        try:
            yield lock
        except BaseException:
            lock.restore()
            raise
        lock.started()


@contextmanager
def claim_together(group: Group, run_dir: str | os.PathLike, *, resume: bool = False,
                   overwrite: bool = False) -> Iterator[RunLock | None]:
    """:func:`claim` for the processes of a run: the first alone writes, so it alone holds
    the lock (yielded there, None elsewhere); when it cannot, every process raises the same
    `RunLockError`, so none of the launch goes on alone.

    Raises:
        RunLockError: as :func:`claim`, on every process.
    """
    with ExitStack() as stack:
        refused, lock = None, None
        if group.rank == 0:
            try:
                lock = stack.enter_context(claim(run_dir, resume=resume, overwrite=overwrite))
            except RunLockError as e:
                refused = str(e)
        refused = group.broadcast(refused)
        if refused is not None:
            raise RunLockError(refused)
        yield lock
