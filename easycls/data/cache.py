"""Decoded-image cache: decode and resize every image once, memory-map it after.

A cache is one ``(N, S, S, 3)`` uint8 ``.npy`` file named by a key that hashes
the references, their sizes and modification times, and the target size. It is
built under ``<key>.npy.partial``, renamed into place, and only then is the
``<key>.json`` manifest written, so a crash mid-build never leaves a file that
looks complete. A lock file serializes concurrent builders (e.g. DDP ranks):
the second one waits and then reuses the first one's cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import UnreadableImage, load_resized, parallel_map, split_zip_ref, zip_member_info

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builders are then unsupported
    fcntl = None

__all__ = [
    "DecodedCache",
    "cache_key",
    "cache_root",
    "estimate_bytes",
    "fits_budget",
    "load_or_build",
]

# Bump when the pixels produced for the same inputs change (resize method, crop, ...).
FORMAT_VERSION = "easycls-decoded-v1"
_DEFAULT_BUDGET_GB = 20.0
_DISK_HEADROOM = 512 * 2**20  # leave room on disk for everything else
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


def cache_root() -> Path:
    """``$EASYCLS_CACHE``, else ``$XDG_CACHE_HOME/easycls``, else ``~/.cache/easycls``."""
    if os.environ.get("EASYCLS_CACHE"):
        return Path(os.environ["EASYCLS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "easycls"


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
        h.update(f"{ref}\t{_fingerprint(ref)}\n".encode())
    return h.hexdigest()


def estimate_bytes(n: int, size: int) -> int:
    """Bytes on disk for ``n`` images cached at ``size`` x ``size``."""
    return n * size * size * 3 + _NPY_HEADER


def fits_budget(
    n: int, size: int, budget_bytes: int | None = None, root: Path | None = None
) -> bool:
    """True if the cache is within budget and fits on the disk holding ``root``.

    The budget defaults to ``$EASYCLS_CACHE_BUDGET_GB`` (else 20 GB).
    """
    if budget_bytes is None:
        gb = float(os.environ.get("EASYCLS_CACHE_BUDGET_GB", _DEFAULT_BUDGET_GB))
        budget_bytes = int(gb * 1e9)
    need = estimate_bytes(n, size)
    return need <= budget_bytes and need + _DISK_HEADROOM <= _free_bytes(root or cache_root())


def _free_bytes(path: Path) -> int:
    """Free space on the disk of ``path``, or of its nearest existing parent."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


# ---------------------------------------------------------------- reading


def _open_existing(npy: Path, manifest: Path, n: int, size: int) -> DecodedCache | None:
    """The cache at ``npy`` if its manifest exists and matches, else None."""
    try:
        meta = json.loads(manifest.read_text())
        if (meta["n"], meta["size"]) != (n, size):
            return None
        failures = {int(i): str(r) for i, r in meta["failures"].items()}
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, half-written or foreign files: rebuild
    if array.shape != (n, size, size, 3) or array.dtype != np.uint8:
        return None
    return DecodedCache(array, failures, npy, built=False)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released if the process dies)."""
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- building


def _fill(
    array: np.ndarray, refs: Sequence[str], size: int, workers: int | None, progress: bool
) -> dict[int, str]:
    """Decode every ref into its slot of ``array``; return ``{index: reason}`` failures."""

    def one(i: int) -> str | None:
        try:
            array[i] = load_resized(refs[i], size)
        except UnreadableImage as e:
            array[i] = 0
            return e.reason
        return None

    results = parallel_map(one, range(len(refs)), workers, progress)
    return {i: r for i, r in enumerate(results) if r is not None}


def _build(
    refs: Sequence[str],
    size: int,
    npy: Path,
    manifest: Path,
    workers: int | None,
    progress: bool,
) -> dict[int, str]:
    """Write the array to ``.partial``, rename it into place, then write the manifest."""
    manifest.unlink(missing_ok=True)  # the old manifest must never vouch for new bytes
    partial = npy.with_name(npy.name + ".partial")
    shape = (len(refs), size, size, 3)
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    failures = _fill(array, refs, size, workers, progress)
    array.flush()
    del array
    with open(partial, "rb") as f:
        os.fsync(f.fileno())  # the data is on disk before the manifest says so
    os.replace(partial, npy)
    meta = {"n": len(refs), "size": size, "failures": failures, "created": time.time()}
    tmp = manifest.with_name(manifest.name + ".partial")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, manifest)
    return failures


def load_or_build(
    refs: Sequence[str],
    size: int,
    root: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DecodedCache:
    """Reuse the decoded cache for ``refs`` at ``size``, or build it.

    Args:
        refs: image references (paths or zip refs), in dataset order.
        size: side of the square each image is resized and center-cropped to.
        root: cache directory (default :func:`cache_root`).
        workers: decoding threads (default: all cores).
        progress: print a progress counter to stderr while building.

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
    npy, manifest = root / f"{key}.npy", root / f"{key}.json"
    cache = _open_existing(npy, manifest, len(refs), size)
    if cache is not None:
        return cache
    with _locked(root / f"{key}.lock"):
        # Another process may have finished the build while we waited.
        cache = _open_existing(npy, manifest, len(refs), size)
        if cache is not None:
            return cache
        failures = _build(refs, size, npy, manifest, workers, progress)
    return DecodedCache(np.load(npy, mmap_mode="r"), failures, npy, built=True)
