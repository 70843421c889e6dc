"""Where training pixels come from, decided once and built together by all processes.

Three paths: the uint8 cache (``cache.py``, fastest to read, 3 bytes a pixel), the compact
JPEG store (``store.py``, about a tenth of that, decoded per item) or the originals
(decoded and resized every epoch). :func:`plan` picks one on the main process and every
process takes that answer; :func:`open_pixels` then builds what is missing with the work
split: each process of a machine encodes its share into the machine's cache folder and
one of them finishes it; without a cache, each process checks its share of the images.
A failure on any process stops all of them with the same error, and nothing half-built
is left behind.

The session is ``distributed.Session`` (rank, local rank, ``agree``, ``gather``,
``barrier``, ``share``); this module never looks at processes itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import cache as dcache
from . import cachedir
from . import store as dstore
from .images import check_images
from .items import DataError
from .locks import locked

__all__ = ["describe", "open_pixels", "plan"]

_WORDS = {"cache": "uint8 cache", "jpeg": "compact JPEG store", "none": "decoded originals"}


def describe(kind: str) -> str:
    """Words for the summary line: "uint8 cache", "compact JPEG store", "decoded originals"."""
    return _WORDS[kind]


def plan(mode: str, splits: Sequence[tuple[int, int]], sess: Any) -> str:
    """The main process's :func:`store.choose_store` answer, the same on every process."""
    return sess.agree(dstore.choose_store(mode, splits) if sess.is_main else None)


def open_pixels(refs: Sequence[str], size: int, kind: str, sess: Any, progress: bool = False,
                source: str = "") -> tuple[Any, dict[int, str]]:
    """(array-like of ``(size, size, 3)`` uint8 images or None, ``{index: reason}``).

    ``kind`` is what :func:`plan` chose; None as the array means decode ``refs`` on access.
    """
    if kind == "none":
        return None, _check_together(refs, sess, progress)
    root = cachedir.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    if kind == "cache":
        return _cache_together(refs, size, root, sess, progress, source)
    return _store_together(refs, size, root, sess, progress, source)


def _check_together(refs: Sequence[str], sess: Any, progress: bool) -> dict[int, str]:
    span = sess.share(len(refs))
    mine = check_images([refs[i] for i in span], progress=progress and sess.is_main)
    failures: dict[int, str] = {}
    for part in sess.gather({span.start + j: r for j, r in mine.items()}):
        failures.update(part)
    return failures


def _together(sess: Any, work: Callable[[], Any]) -> Any:
    """Run ``work`` on every process; if it fails anywhere, raise everywhere."""
    error: BaseException | None = None
    result = None
    try:
        result = work()
    except Exception as e:  # noqa: BLE001  every process must reach the gather below
        error = e
    messages = sess.gather(None if error is None else str(error))
    if error is not None:
        raise error
    failed = [m for m in messages if m is not None]
    if failed:
        raise DataError(f"another process failed while preparing the images: {failed[0]}")
    return result


def _cache_together(refs, size, root, sess, progress, source):
    key = dcache.cache_key(refs, size)
    built = dcache.open_cache(root, key, len(refs), size)
    if not any(sess.any_rank(built is None)):
        return built.array, dict(built.failures)
    partial = dcache.partial_path(root, key)
    need = dcache.estimate_bytes(len(refs), size)
    lead = sess.local_rank == 0
    with _lead_lock(lead, root / f"{key}.lock", "building the decoded-image cache"):
        def start():
            if lead:
                with cachedir.guarded_build(root, partial, need, "decoded-image cache"):
                    dcache.allocate(partial, len(refs), size)

        span = sess.share(len(refs), local=True)
        with _cleanup(lead, partial):
            _together(sess, start)
            failures = _merged(sess, _together(sess, lambda: dcache.fill_part(
                partial, refs, size, span, progress=progress and sess.is_main)))
            _together(sess, lambda: lead and _finish_cache(root, key, partial, refs, size,
                                                           failures, source))
    done = dcache.open_cache(root, key, len(refs), size)
    return done.array, dict(done.failures)


def _finish_cache(root, key, partial, refs, size, failures, source) -> None:
    _finish(partial, "decoded-image cache", lambda: dcache.open_cache(root, key, len(refs), size),
            lambda: dcache.finish(root, key, partial, len(refs), size, failures, source))


def _finish(partial: Path, what: str, open_fn: Callable, finish_fn: Callable) -> None:
    """Publish a finished build, unless another machine sharing the folder already did."""
    if open_fn() is not None:  # another machine's
        cachedir.remove_path(partial)
        return
    with cachedir.guarded_build(partial.parent, partial, 0, what):
        finish_fn()


def _store_together(refs, size, root, sess, progress, source):
    key = dstore.store_key(refs, size)
    built = dstore.open_store(root, key, len(refs), size)
    if not any(sess.any_rank(built is None)):
        return built, dict(built.failures)
    build_dir = dstore.partial_dir(root, key)
    need = dstore.estimate_store_bytes(len(refs), size)
    lead, parts = sess.local_rank == 0, sess.local_world_size
    with _lead_lock(lead, root / f"{key}.lock", "building the compact image store"):
        def start():
            if lead:
                cachedir.make_room(root, need, "compact image store")
                cachedir.remove_path(build_dir)
                build_dir.mkdir(parents=True)

        def part():
            with cachedir.guarded_build(root, build_dir, 0, "compact image store"):
                dstore.build_part(refs, size, build_dir, sess.local_rank, parts,
                                  progress=progress and sess.is_main)

        with _cleanup(lead, build_dir):
            _together(sess, start)
            _together(sess, part)
            _together(sess, lambda: lead and _finish_store(root, key, build_dir, refs, size,
                                                           parts, source))
    done = dstore.open_store(root, key, len(refs), size)
    done.built = True
    return done, dict(done.failures)


def _finish_store(root, key, build_dir, refs, size, parts, source) -> None:
    _finish(build_dir, "compact image store", lambda: dstore.open_store(root, key, len(refs), size),
            lambda: dstore.finish(root, key, build_dir, len(refs), size, parts, source))


def _merged(sess: Any, mine: dict[int, str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for part in sess.gather(mine):
        out.update(part)
    return out


@contextlib.contextmanager
def _cleanup(lead: bool, partial: Path):
    """On any failure, the machine's lead process deletes the half-built files."""
    try:
        yield
    except BaseException:
        if lead:
            cachedir.remove_path(partial)
        raise


def _lead_lock(lead: bool, path: Path, what: str):
    """The build lock on the process that leads a machine's build (other jobs wait on it)."""
    return locked(path, what) if lead else contextlib.nullcontext()
