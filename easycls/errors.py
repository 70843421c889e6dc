"""Which errors are the user's and which are bugs: the one place every command asks.

An error that comes from what the user typed, their files or their environment (an easycls
`UserError`, or an `OSError` such as a permission denied, a missing folder or a path through a
file) is shown as one line (what was wrong, where, what to do) with a non-zero exit status. Any
other exception is a bug and keeps its traceback. ``--debug`` (or ``EASYCLS_DEBUG=1``) shows the
traceback of both.

Example:
    >>> explain(PermissionError(13, "Permission denied", "/srv/runs/x"))[0]   # doctest: +ELLIPSIS
    '/srv/runs/x: permission denied; ...'
"""

from __future__ import annotations

import errno
import os

__all__ = ["DEBUG_ENV", "UserError", "debugging", "explain"]

DEBUG_ENV = "EASYCLS_DEBUG"


class UserError(Exception):
    """Base of easycls's errors about the input, the files or the environment (one line).

    `exit_code` is the command's exit status (2 unless a subclass says otherwise).
    """

    exit_code = 2


_WRITE_OR_READ = "choose a folder you can write to, or change its permissions"
# errno -> (what happened, what to do); the path comes first in the line.
_OS = {
    errno.EACCES: ("permission denied", _WRITE_OR_READ),
    errno.EPERM: ("operation not permitted", _WRITE_OR_READ),
    errno.EROFS: ("read-only file system", "choose a folder on a writable disk"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder",
                    "choose a path whose parents are folders"),
    errno.EISDIR: ("is a folder where a file was expected", "give the path of a file"),
    errno.EEXIST: ("already exists", "choose another path"),
    errno.ENOSPC: ("no space left on the disk", "free some space or choose another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another disk"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links on this path"),
}


def _os_line(e: OSError) -> str | None:
    said = _OS.get(e.errno)
    if said is None:
        return None
    where = " -> ".join(os.fsdecode(f) for f in (e.filename, e.filename2) if f is not None)
    what, todo = said
    return f"{where}: {what}; {todo}" if where else f"{what} ({e.strerror}); {todo}"


def explain(e: BaseException) -> tuple[str, int] | None:
    """(the one line to show, the exit status) for a user's error; None for a bug."""
    if isinstance(e, UserError):
        return str(e) or type(e).__name__, int(e.exit_code)
    if isinstance(e, ImportError):
        if not getattr(e, "name", None):  # raised by easycls, saying what to install
            return str(e), 2
        return (f"a package this needs is not installed ({e}); install it with pip "
                "(the extras are listed in the install section of the docs)"), 2
    if isinstance(e, OSError) and (line := _os_line(e)) is not None:
        return line, 1 if e.errno in (errno.ENOSPC, errno.EDQUOT) else 2
    if isinstance(e, _PATH_ERRORS) and e.errno is None and str(e):
        return str(e), 2  # raised by easycls with its own message ("x does not exist: ...")
    return None


_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
                IsADirectoryError)


def debugging() -> bool:
    """Whether tracebacks are wanted for the user's errors too (``EASYCLS_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
