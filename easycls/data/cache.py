"""Decoded-image cache: decode and resize every image once, memory-map it after.

A cache is one ``(N, S, S, 3)`` uint8 ``.npy`` file named by a key that hashes
the references, their sizes and modification times, and the target size. Its space
is reserved first (so a full disk is a clear error, never a SIGBUS through the memory
map), it is built under ``<key>.npy.partial-<host>``, renamed into place, and only then
is the ``<key>.json`` manifest written, so a crash mid-build never leaves a file that
looks complete; a failed build deletes its partial file. A lock file serializes
concurrent builders (e.g. DDP ranks): the second one waits and then reuses the first
one's cache. The folder's size cap and eviction live in ``cachedir.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cachedir
from .cachedir import HEADROOM, cache_root, free_bytes
from .images import UnreadableImage, load_resized, parallel_map, split_zip_ref, zip_member_info
from .locks import open_or_build

__all__ = [
    "DecodedCache",
    "Rows",
    "allocate",
    "open_cache",
    "cache_key",
    "fill_part",
    "finish",
    "partial_path",
    "cache_root",
    "estimate_bytes",
    "fits_budget",
    "auto_budget",
    "load_or_build",
]

# Bump when the pixels produced for the same inputs change (resize method, crop, ...).
FORMAT_VERSION = "easycls-decoded-v1"
_DEFAULT_BUDGET_GB = 20.0
_NPY_HEADER = 128  # numpy's .npy header for a 4-d uint8 array


@dataclass
class DecodedCache:
    """A built or reused cache.

    Attributes:
        array: read-only memmap of shape ``(N, S, S, 3)``, uint8.
        failures: ``{index: reason}`` for unreadable images; their slots are zeros.
        path: the ``.npy`` file.
        built: True if built by this call, False if an existing cache was reused.
    """

    array: np.memmap
    failures: dict[int, str]
    path: Path
    built: bool

    def __len__(self) -> int:
        return len(self.array)


def _fingerprint(ref: str) -> str:
    """What identifies a file's content cheaply: size and mtime (zip: size, CRC, zip mtime)."""
    parts = split_zip_ref(ref)
    try:
        if parts is None:
            st = os.stat(ref)
            return f"{st.st_size}:{st.st_mtime_ns}"
        info = zip_member_info(ref)
        return f"{info.file_size}:{info.CRC}:{os.stat(parts[0]).st_mtime_ns}"
    except (OSError, KeyError):
        return "missing"  # so the key changes when the file appears


def cache_key(refs: Sequence[str], size: int) -> str:
    """Hex sha256 over refs, their fingerprints, ``size`` and the format version.

    Example:
        >>> len(cache_key(["a.jpg"], 64))
        64
    """
    h = hashlib.sha256(f"{FORMAT_VERSION}\n{size}\n{len(refs)}\n".encode())
    for ref in refs:
        # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
        h.update(f"{ref}\t{_fingerprint(ref)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def estimate_bytes(n: int, size: int) -> int:
    """Bytes on disk for ``n`` images cached at ``size`` x ``size``."""
    return n * size * size * 3 + _NPY_HEADER


def auto_budget() -> int:
    """Largest uint8 cache chosen automatically: ``$EASYCLS_CACHE_BUDGET_GB`` (else 20 GB)."""
    return int(float(os.environ.get("EASYCLS_CACHE_BUDGET_GB") or _DEFAULT_BUDGET_GB) * 1e9)


def fits_budget(
    n: int, size: int, budget_bytes: int | None = None, root: Path | None = None
) -> bool:
    """True if the cache is within budget and fits on the disk holding ``root``.

    The budget defaults to ``$EASYCLS_CACHE_BUDGET_GB`` (else 20 GB).
    """
    budget = auto_budget() if budget_bytes is None else budget_bytes
    need = estimate_bytes(n, size)
    return need <= budget and need + HEADROOM <= free_bytes(root or cache_root())


class Rows:
    """Some rows of a cache or store, indexed without copying the rest.

    ``array[rows]`` on a memory map reads every kept row into RAM at once (the whole
    cache when one image of many is unreadable); this view reads only what is asked.

    Example:
        >>> view = Rows(cache.array, [0, 2, 3])
        >>> view[1].shape == cache.array[2].shape, view[[0, 2]].shape[0]
        (True, 2)
    """

    def __init__(self, base, rows: Sequence[int]):
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.base[int(self.rows[i])]
        return self.base[self.rows[np.asarray(i, dtype=np.int64)]]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.base.shape[1:]) if hasattr(self.base, "shape") else (
            len(self.rows),)


# ---------------------------------------------------------------- reading


def open_cache(root: Path, key: str, n: int, size: int) -> DecodedCache | None:
    """The cache ``key`` if its manifest exists and matches, else None."""
    npy = root / f"{key}.npy"
    meta = cachedir.read_manifest(root, key)
    try:
        if meta is None or (meta["n"], meta["size"]) != (n, size):
            return None
        failures = {int(i): str(r) for i, r in meta["failures"].items()}
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, half-written or foreign files: rebuild
    if array.shape != (n, size, size, 3) or array.dtype != np.uint8:
        return None
    cachedir.touch(root, key)
    return DecodedCache(array, failures, npy, built=False)


# ---------------------------------------------------------------- building


def partial_path(root: Path, key: str) -> Path:
    """Where the cache ``key`` is built (one per machine: nodes may share the folder)."""
    return Path(root) / f"{key}.npy.partial-{socket.gethostname()}"


def allocate(partial: Path, n: int, size: int) -> None:
    """Create the ``.npy`` file with all its blocks reserved, before anything maps it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (n, size, size, 3)})
    with open(partial, "wb") as f:
        f.write(header.getvalue())
        f.flush()
        cachedir.reserve(f.fileno(), 0, header.tell() + n * size * size * 3)


def fill_part(partial: Path, refs: Sequence[str], size: int, span: range,
              workers: int | None = None, progress: bool = False) -> dict[int, str]:
    """Decode ``refs[span]`` into their rows of the allocated file; ``{index: reason}``."""
    array = np.load(partial, mmap_mode="r+")

    def one(i: int) -> str | None:
        try:
            array[i] = load_resized(refs[i], size)
        except UnreadableImage as e:
            array[i] = 0
            return e.reason
        return None

    results = parallel_map(one, span, workers, progress)
    failures = {i: r for i, r in zip(span, results) if r is not None}
    array.flush()  # the map closes when this function returns
    return failures


def finish(root: Path, key: str, partial: Path, n: int, size: int, failures: dict[int, str],
           source: str = "") -> None:
    """Sync, rename into place, then write the manifest that vouches for it."""
    with open(partial, "rb") as f:
        os.fsync(f.fileno())  # the data is on disk before the manifest says so
    os.replace(partial, root / f"{key}.npy")
    meta = {"kind": "cache", "n": n, "size": size, "failures": failures,
            "created": time.time(), "source": source}
    cachedir.write_manifest(root, key, meta)


def _build(refs: Sequence[str], size: int, root: Path, key: str, workers: int | None,
           progress: bool, source: str) -> dict[int, str]:
    """Allocate, fill and finish the cache in this one process."""
    (root / f"{key}.json").unlink(missing_ok=True)  # an old manifest never vouches for new bytes
    partial = partial_path(root, key)
    need = estimate_bytes(len(refs), size)
    with cachedir.guarded_build(root, partial, need, "decoded-image cache"):
        allocate(partial, len(refs), size)
        failures = fill_part(partial, refs, size, range(len(refs)), workers, progress)
        finish(root, key, partial, len(refs), size, failures, source)
    return failures


def _remove_stale(root: Path, key: str) -> None:
    """Partial files of crashed builds of ``key``; safe because we hold its lock."""
    for p in root.glob(f"{key}.*.partial*"):
        cachedir.remove_path(p)


def load_or_build(
    refs: Sequence[str],
    size: int,
    root: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    source: str = "",
) -> DecodedCache:
    """Reuse the decoded cache for ``refs`` at ``size``, or build it.

    Args:
        refs: image references (paths or zip refs), in dataset order.
        size: side of the square each image is resized and center-cropped to.
        root: cache directory (default :func:`cache_root`).
        workers: decoding threads (default: all cores).
        progress: print a progress counter to stderr while building.
        source: what the images are (shown by ``easycls cache list``).

    Raises:
        DataError: not enough disk space (nothing is left behind), or the folder is not
            writable.

    Example:
        >>> cache = load_or_build(refs, 64)
        >>> cache.array.shape
        (len(refs), 64, 64, 3)
    """
    if not refs:
        raise ValueError("load_or_build needs at least one image reference")
    root = Path(root) if root is not None else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(refs, size)

    def build() -> DecodedCache:
        _remove_stale(root, key)
        failures = _build(refs, size, root, key, workers, progress, source)
        npy = root / f"{key}.npy"
        return DecodedCache(np.load(npy, mmap_mode="r"), failures, npy, built=True)

    return open_or_build(root / f"{key}.lock", "decoded-image cache",
                         lambda: open_cache(root, key, len(refs), size), build)
