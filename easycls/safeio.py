"""Files that are either complete or untouched: write a temporary, fsync, rename over the target.

Every file easycls writes goes through `atomic_write` (or `write_bytes` / `write_text` /
`write_json`). A failure mid-write (a full disk, a quota, a read-only folder) removes the
temporary, leaves the previous version of the file as it was, and raises one `WriteError`
(`DiskFullError` when the disk or quota is full) whose message names the file, the cause and,
for a full disk, how much room the file needs and how much is free.

Example:
    >>> with atomic_write("runs/x/checkpoint.pth") as f:   # doctest: +SKIP
    ...     torch.save(state, f)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError

__all__ = ["WriteError", "DiskFullError", "NotWritable", "check_writable", "atomic_write",
           "write_bytes", "write_text", "write_json", "one_field", "ensure_room", "printable",
           "printable_text"]

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class WriteError(UserError, OSError):
    """A file could not be written; the previous version (if any) is unchanged."""

    exit_code = 1

    def __init__(self, message: str, err: int | None = None):
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        # One line, whatever wraps it (fastai rewrites `args` of errors raised in callbacks).
        return self.message


class DiskFullError(WriteError):
    """No space left (or quota exceeded) on the disk that holds the file."""


class NotWritable(WriteError):
    """A folder that the work would write into cannot be written (checked before the work)."""

    exit_code = 2


def check_writable(folder: str | os.PathLike, what: str, hint: str = "", *,
                   create: bool = True) -> Path:
    """`folder` if a new file can be created in it (made first with its parents when `create`).

    Called before the work starts, so a run never fails at its end for want of a place to
    write. `what` names the folder in the message, `hint` says what to do instead.

    Raises:
        NotWritable: naming the folder, the reason and what to do.
    """
    folder = Path(folder)
    todo = hint or "choose a folder you can write to"
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            why = "is a file, not a folder" if folder.exists() else "does not exist"
            raise NotWritable(f"cannot write {what}: {folder} {why}; {todo}")
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".easycls-probe-")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise NotWritable(f"cannot write {what}: {folder} is a file, not a folder; "
                          f"{todo}") from None
    except NotWritable:
        raise
    except OSError as e:
        where = os.fsdecode(e.filename) if e.filename else str(folder)
        raise NotWritable(f"cannot write {what} in {folder}: {where}: "
                          f"{(e.strerror or str(e)).lower()}; {todo}") from None
    return folder


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _error(path: Path, e: OSError, written: int, expected: int | None) -> WriteError:
    if e.errno in _FULL:
        need = max(written, expected or 0)
        free = _free(path.parent)
        room = f"; {_mb(free)} free there" if free is not None else ""
        return DiskFullError(f"disk full: could not write {path} (needs at least {_mb(need)}"
                             f"{room}); the previous version of the file is unchanged. Free "
                             "some space (or choose another --out) and run again", e.errno)
    return WriteError(f"could not write {path}: {e.strerror or e}; the previous version of the "
                      "file is unchanged", e.errno)


class _Tracked:
    """The temporary file, counting bytes and keeping the first OSError of a write.

    Writers such as `torch.save` turn a failed write into their own RuntimeError ("unexpected
    pos"); the recorded OSError says what really happened.
    """

    def __init__(self, f: IO):
        self._f, self.written, self.error = f, 0, None

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.written += n if isinstance(n, int) else len(data)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _mode_for(path: Path) -> int:
    """The replaced file's permissions, else what a new file gets under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename itself durable; not every system can open a folder
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, expected_size: int | None = None,
                 **open_kwargs: Any) -> Iterator[IO]:
    """A file object for `path`'s temporary (`<name>.tmp`); renamed over `path` on success.

    Args:
        path: the file to (re)place.
        mode: "wb" or "w" (text; pass `encoding=`/`newline=` as for `open`).
        expected_size: bytes the file will need, for the disk-full message.

    Raises:
        DiskFullError: no space or quota left; WriteError: any other failure to write.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    perms, tracked = _mode_for(path), None
    try:
        with open(tmp, mode, **open_kwargs) as f:
            tracked = _Tracked(f)
            yield tracked
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = (tracked.error if tracked is not None else None) or e
        if isinstance(cause, OSError) and not isinstance(cause, WriteError):
            raise _error(path, cause, tracked.written if tracked else 0, expected_size) from e
        raise
    _fsync_dir(path.parent)


def ensure_room(folder: str | os.PathLike, nbytes: int, what: str) -> None:
    """DiskFullError before writing `what` when the disk of `folder` has less than `nbytes` free
    (so several files that belong together are written all or none)."""
    free = _free(Path(folder))
    if free is not None and free < nbytes:
        raise DiskFullError(f"disk full: {what} needs {_mb(nbytes)} in {folder}, only {_mb(free)} "
                            "free; nothing was written. Free some space (or choose another --out) "
                            "and run again", errno.ENOSPC)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path, "wb", expected_size=len(data)) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` as UTF-8 to `path` atomically; undecodable name bytes as `printable` shows."""
    return write_bytes(path, printable_text(text).encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def printable(name: str | os.PathLike) -> str:
    r"""A file name as valid UTF-8 text: bytes that are not UTF-8 (which `os.listdir` hands over
    as lone surrogates) shown as ``\xNN``.

    Example:
        >>> printable(os.fsdecode(b"bad\xff.png"))
        'bad\\xff.png'
    """
    return printable_text(os.fsdecode(name))


def one_field(text: str) -> str:
    """`text` as one field of a tab-separated line: printable, and JSON-quoted (``"a\\tb.png"``)
    when it holds a tab or a line break, which would otherwise split the line or the row."""
    text = printable_text(str(text))
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in "\t\n\r") else text


def printable_text(text: str) -> str:
    """`text` with every undecodable file-name byte (a lone surrogate) written as ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name produces: show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
