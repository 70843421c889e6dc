"""The cache folder: its entries, their disk space, its locks, and builds that fail safely.

Every entry (one stored format of some images, see ``storage.py``) is ``<key>.json`` (its
manifest, written last, through ``safeio``) plus its data (``<key>.npy``, the folder
``<key>.store``, ...). The manifest's modification time is the entry's last use, so the
folder can be kept under a size cap (``$EASYCLS_CACHE_MAX_GB``) by evicting the least
recently used entries. A build reserves its space up front (``posix_fallocate``), so a full
disk is a clear :class:`DataError` and never a crash while writing through a memory map, and
any failure removes the partial files so the disk is not left full.

Builders (of an entry, or of a built-in dataset) serialize on :func:`locked`: an exclusive
``flock`` (``runlock.try_flock``) that the kernel releases when its holder dies, so a
crashed build never blocks the next one. Waiting is bounded: a waiting process reports how
long it has waited and gives up with :class:`LockTimeout` (``$EASYCLS_LOCK_TIMEOUT``
seconds, default two hours) instead of hanging a multi-node job forever.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..runlock import release_flock, try_flock
from ..safeio import write_json
from .items import DataError

__all__ = ["cache_root", "entries", "clear", "format_entries", "NoSpace", "locked",
           "LockTimeout"]

_DEFAULT_CAP_GB = 50.0
_DEFAULT_LOCK_TIMEOUT = 2 * 3600.0
_REPORT_EVERY = 60.0
_POLL = 0.25
HEADROOM = 512 * 2**20  # leave room on disk for everything else
_KEY = re.compile(r"^[0-9a-f]{64}$")
_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def cache_root() -> Path:
    """``$EASYCLS_CACHE``, else ``$XDG_CACHE_HOME/easycls``, else ``~/.cache/easycls``."""
    if os.environ.get("EASYCLS_CACHE"):
        return Path(os.environ["EASYCLS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "easycls"


def cache_cap() -> int:
    """Most bytes all entries together may take: ``$EASYCLS_CACHE_MAX_GB`` (default 50)."""
    return int(float(os.environ.get("EASYCLS_CACHE_MAX_GB") or _DEFAULT_CAP_GB) * 1e9)


def free_bytes(path: Path) -> int:
    """Free space on the disk of ``path``, or of its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _gb(n: float) -> str:
    if n < 1e5:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ---------------------------------------------------------------- entries


@dataclass
class Entry:
    """One cache or store in the cache folder, as ``easycls cache`` lists it."""

    key: str
    kind: str  # "cache", "store" or "partial" (an interrupted build's leftovers)
    bytes: int
    created: float
    last_used: float
    source: str
    n: int
    size: int
    root: Path

    def paths(self) -> list[Path]:
        """Everything on disk that belongs to this entry (lock file excluded)."""
        return [p for p in self.root.glob(f"{self.key}.*") if not p.name.endswith(".lock")]


def _disk_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0


def read_manifest(root: Path, key: str) -> dict | None:
    """The manifest of ``key`` or None when it is absent or unreadable."""
    try:
        meta = json.loads((Path(root) / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_manifest(root: Path, key: str, meta: dict) -> None:
    """Write ``<key>.json`` atomically: it is what vouches for the data, so it comes last."""
    write_json(Path(root) / f"{key}.json", meta)


def touch(root: Path, key: str) -> None:
    """Mark ``key`` as just used (its manifest's mtime orders the eviction)."""
    with contextlib.suppress(OSError):
        os.utime(Path(root) / f"{key}.json")


def entries(root: Path | None = None) -> list[Entry]:
    """Every entry of the cache folder, least recently used first.

    The folder is listed once (every `fit` asks, and it may hold thousands of files)."""
    root = Path(root) if root is not None else cache_root()
    if not root.is_dir():
        return []
    by_key: dict[str, list[Path]] = {}
    for p in root.iterdir():
        by_key.setdefault(p.name.split(".", 1)[0], []).append(p)
    found = [_entry(root, k, paths) for k, paths in sorted(by_key.items()) if _KEY.match(k)]
    return sorted((e for e in found if e is not None), key=lambda e: e.last_used)


def _entry(root: Path, key: str, paths: list[Path]) -> Entry | None:
    meta = read_manifest(root, key)
    data = [p for p in paths if p.suffix not in (".lock", ".json")]
    if meta is None and not data:
        return None  # a lone lock file
    size = sum(_disk_bytes(p) for p in data)
    try:  # another process may evict the entry while this one lists it
        if meta is None:
            mtime = max(p.stat().st_mtime for p in data)
            return Entry(key, "partial", size, mtime, mtime, "", 0, 0, root)
        used = (root / f"{key}.json").stat().st_mtime
    except OSError:
        return None
    return Entry(key, str(meta.get("kind", "cache")), size, float(meta.get("created", used)),
                 used, str(meta.get("source", "")), int(meta.get("n", 0)),
                 int(meta.get("size", 0)), root)


def remove_path(path: Path) -> None:
    """Delete a file or folder; absent is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove(entry: Entry) -> bool:
    """Delete ``entry`` unless a build holds its lock; True if it was deleted."""
    try:
        with locked(entry.root / f"{entry.key}.lock", timeout=0, say=None):
            # the manifest first: without it nothing trusts the data any more
            remove_path(entry.root / f"{entry.key}.json")
            for p in entry.paths():
                remove_path(p)
    except TimeoutError:
        return False
    return True


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f} {unit}"
    return f"{seconds:.0f} s"


def format_entries(found: list[Entry], now: float | None = None) -> str:
    """The table ``easycls cache list`` prints: key, kind, images, size, bytes, age, source."""
    now = time.time() if now is None else now
    head = f"{'key':<12} {'kind':<8} {'images':>9} {'px':>5} {'size':>10} {'last used':>12}  source"
    lines = [head]
    for e in found:
        lines.append(f"{e.key[:12]:<12} {e.kind:<8} {e.n:>9} {e.size:>5} {_gb(e.bytes):>10} "
                     f"{_age(now - e.last_used) + ' ago':>12}  {e.source}")
    total = sum(e.bytes for e in found)
    lines.append(f"{len(found)} entries, {_gb(total)} of the {_gb(cache_cap())} cap "
                 f"(EASYCLS_CACHE_MAX_GB), in {found[0].root if found else cache_root()}")
    return "\n".join(lines)


def clear(root: Path | None = None, older_than: float | None = None,
          keys: list[str] | None = None) -> list[Entry]:
    """Delete entries (all, those unused for ``older_than`` seconds, or those whose key
    starts with one of ``keys``); entries being built are left alone. Returns the deleted."""
    now = time.time()
    picked = [e for e in entries(root)
              if (older_than is None or now - e.last_used >= older_than)
              and (keys is None or any(e.key.startswith(k) for k in keys))]
    return [e for e in picked if _remove(e)]


# ---------------------------------------------------------------- space


def room(root: Path | None = None) -> int:
    """Bytes a new entry could take after evicting every older one (cap and disk)."""
    root = Path(root) if root is not None else cache_root()
    held = sum(e.bytes for e in entries(root))
    return max(0, min(cache_cap(), free_bytes(root) + held - HEADROOM))


class NoSpace(DataError):
    """Not enough disk space for a cache or store (nothing was left behind)."""

    exit_code = 1


def _space_error(need: int, root: Path, what: str, free: int | None = None) -> NoSpace:
    free = free_bytes(root) if free is None else free
    return NoSpace(
        f"not enough disk space for the {what}: it needs {_gb(need)} (plus {_gb(HEADROOM)} "
        f"headroom) in {root}, which has {_gb(free)} free after evicting older entries. Free "
        f"some space (`easycls cache clear`), point EASYCLS_CACHE at a larger disk (e.g. "
        f"EASYCLS_CACHE=/scratch/easycls), or train with --store none to decode the originals")


def make_room(root: Path, need: int, what: str) -> None:
    """Evict least recently used entries until ``need`` more bytes fit the cap and the disk.

    Raises:
        DataError: ``need`` exceeds the cap, or the disk lacks the space even after eviction.
    """
    cap = cache_cap()
    if need > cap:
        raise NoSpace(
            f"the {what} needs {_gb(need)}, more than the cache cap of {_gb(cap)}: raise "
            "EASYCLS_CACHE_MAX_GB (GB), or train with --store jpeg (smaller) or --store none")
    held = entries(root)
    used, free = sum(e.bytes for e in held), free_bytes(root)
    for e in held:  # oldest first
        if used + need <= cap and need + HEADROOM <= free:
            break
        if e.kind != "partial" or time.time() - e.last_used > 60:  # fresh partials: a build
            if _remove(e):
                used, free = used - e.bytes, free_bytes(root)
    if need + HEADROOM > free:
        raise _space_error(need, root, what, free)


def reserve(fd: int, offset: int, length: int) -> None:
    """Allocate disk blocks now so later writes (also through a memory map) cannot hit ENOSPC."""
    if length > 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


@contextlib.contextmanager
def guarded(root: Path, partial: Path, need: int, what: str) -> Iterator[None]:
    """Run a step of a build of ``need`` bytes; on any failure delete ``partial`` (file or
    folder) and turn disk errors into a :class:`DataError`."""
    try:
        yield
    except BaseException as e:
        remove_path(partial)
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            raise _space_error(need, root, what) from e
        if isinstance(e, OSError):
            raise DataError(f"could not write the {what} in {root}: {e}; point EASYCLS_CACHE "
                            "at a writable disk, or train with --store none") from e
        raise


# ---------------------------------------------------------------- locks


class LockTimeout(DataError, TimeoutError):
    """Another process held a build lock for longer than the allowed wait."""


def lock_timeout() -> float:
    """Seconds to wait for another builder: ``$EASYCLS_LOCK_TIMEOUT``, else two hours."""
    return float(os.environ.get("EASYCLS_LOCK_TIMEOUT") or _DEFAULT_LOCK_TIMEOUT)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str = "a build", timeout: float | None = None,
           say: Callable[[str], None] | None = _say,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold an exclusive lock on ``path``; wait for it at most ``timeout`` seconds.

    Where the filesystem cannot lock, builders are not serialized (as ``runlock`` then
    falls back on its record, a build has nothing better to go on).

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
        start, next_report = clock(), 0.0
        while (held := try_flock(f.fileno())) is False:
            waited = clock() - start
            if waited >= timeout:
                raise LockTimeout(
                    f"gave up after {waited:.0f} s waiting for another process doing {what} "
                    f"(lock {path}); if no other easycls process is running, the lock holder "
                    "is stuck: stop it, or raise EASYCLS_LOCK_TIMEOUT (seconds)")
            if waited >= next_report:
                say(f"waiting for another process doing {what} ({waited:.0f} s; lock {path})")
                next_report = waited + _REPORT_EVERY
            sleep(_POLL)
        try:
            yield
        finally:
            if held:  # explicitly: a forked child holding the file would keep it locked
                release_flock(f.fileno())
