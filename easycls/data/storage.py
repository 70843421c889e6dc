"""Where training pixels come from: one interface for a storage format, one way to build it.

A storage format (:class:`Format`) keeps every image of a split decoded once and resized
to the stored square: the uint8 cache (one ``(N, S, S, 3)`` ``.npy`` file, memory-mapped:
fastest to read, 3 bytes a pixel) or the compact JPEG store (each image re-encoded as a
JPEG at quality 90 into a few shard files, in the spirit of FFCV's and webdataset's stores:
about a tenth of that, decoded per batch; its pixels match the cache's up to JPEG's loss).
The third choice, ``"none"``, decodes the originals every epoch.

:func:`choose` picks one on the first process and every process takes that answer;
:func:`open_pixels` opens it, or builds it along the one path every format takes:

1. lock the entry (``<key>.lock`` in the cache folder; another job waits, then reuses);
2. make room (evicting the least recently used entries) and drop a crashed build's leftovers;
3. each process of the machine builds its part into ``<key>.<suffix>.partial-<host>``;
4. one of them finishes it, renames it into place and writes the manifest that vouches for it.

A failure on any process stops all of them with the same error, and nothing half-built is
left behind. The processes are a ``job.Group``; this module never looks at processes itself.

To add a format: implement :class:`Format` and add it to ``FORMATS`` (and to the choices
of ``TrainConfig.store``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from ..job import ONE, Group, share
from . import cachedir, remote, stream
from .images import (
    UnreadableImage,
    check_images,
    load_resized,
    parallel_map,
    split_zip_ref,
    zip_member_info,
)
from .items import DataError
from .jpeg import JpegStore

__all__ = ["Format", "Stored", "choose", "open_pixels", "describe"]

_DEFAULT_BUDGET_GB = 20.0


class Format(Protocol):
    """A way to store the pixels of many images in the cache folder.

    Attributes:
        kind: the manifest's ``kind`` (what ``easycls cache list`` shows).
        suffix: the data's name after the key (``<key>.npy``, ``<key>.store``).
        what: its name in messages ("decoded-image cache").
    """

    kind: str
    suffix: str
    what: str

    def key(self, refs: Sequence[str], size: int) -> str:
        """Hex sha256 naming the entry of ``refs`` at ``size`` (changes when a file does)."""

    def estimate(self, n: int, size: int) -> int:
        """Bytes on disk for ``n`` images at ``size`` (an upper estimate)."""

    def open(self, path: Path, n: int, size: int, failures: dict[int, str]) -> Any:
        """The reader of the finished data at ``path`` (``reader[i]``, ``reader[[i, j]]``
        give uint8 HWC / NHWC arrays), or None when it does not hold ``n`` images."""

    def build_part(self, partial: Path, refs: Sequence[str], size: int, part: int, parts: int,
                   progress: bool) -> dict[int, str]:
        """Store part ``part`` of ``parts`` of ``refs`` into ``partial``; ``{index: reason}``
        of the unreadable ones. Parts are built at the same time by different processes."""

    def finish(self, partial: Path, n: int, size: int, parts: int) -> dict:
        """Make the built parts one entry (still at ``partial``); extra manifest fields."""


class Stored(NamedTuple):
    """What :func:`open_pixels` gives: the reader (None for "none"), ``{index: reason}`` of
    the unreadable images, whether this call built it, and where it is."""

    pixels: Any
    failures: dict[int, str]
    built: bool = False
    path: Path | None = None


# ---------------------------------------------------------------- the formats


def _fingerprint(ref: str) -> str:
    """What identifies a file's content cheaply: size and mtime (zip: size, CRC, zip mtime)."""
    if remote.is_remote(ref):
        return remote.fingerprint(ref)
    parts = split_zip_ref(ref)
    try:
        if parts is None:
            st = os.stat(ref)
            return f"{st.st_size}:{st.st_mtime_ns}"
        info = zip_member_info(ref)
        return f"{info.file_size}:{info.CRC}:{os.stat(parts[0]).st_mtime_ns}"
    except (OSError, KeyError):
        return "missing"  # so the key changes when the file appears


class Uint8Cache:
    """Every image as ``size`` x ``size`` x 3 uint8 in one ``.npy`` file, memory-mapped."""

    kind, suffix, what = "cache", "npy", "decoded-image cache"
    # Bump when the pixels produced for the same inputs change (resize method, crop, ...).
    version = "easycls-decoded-v1"
    header = 128  # numpy's .npy header for a 4-d uint8 array

    def key(self, refs: Sequence[str], size: int) -> str:
        h = hashlib.sha256(f"{self.version}\n{size}\n{len(refs)}\n".encode())
        for ref in refs:
            # surrogateescape: a file name that is not UTF-8 hashes as its own bytes
            h.update(f"{ref}\t{_fingerprint(ref)}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def estimate(self, n: int, size: int) -> int:
        return n * size * size * 3 + self.header

    def open(self, path: Path, n: int, size: int, failures: dict[int, str]) -> Any:
        array = np.load(path, mmap_mode="r")
        return array if array.shape == (n, size, size, 3) and array.dtype == np.uint8 else None

    def build_part(self, partial, refs, size, part, parts, progress):
        array = self._allocate(partial, len(refs), size)
        span = share(len(refs), part, parts)

        def one(i: int) -> str | None:
            try:
                array[i] = load_resized(refs[i], size)
            except UnreadableImage as e:
                array[i] = 0
                return e.reason
            return None

        results = parallel_map(one, span, None, progress)
        array.flush()  # the map closes when this function returns
        return {i: r for i, r in zip(span, results) if r is not None}

    def _allocate(self, partial: Path, n: int, size: int) -> np.memmap:
        """The file with all its blocks reserved before anything maps it (so a full disk is
        an error here, never a SIGBUS later). Every part does it: the same bytes each time."""
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": (n, size, size, 3)})
        total = header.tell() + n * size * size * 3
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, header.getvalue(), 0)
            cachedir.reserve(fd, 0, total)
            if os.fstat(fd).st_size < total:  # no fallocate here: a sparse file, same size
                os.ftruncate(fd, total)
        finally:
            os.close(fd)
        return np.load(partial, mmap_mode="r+")

    def finish(self, partial, n, size, parts):
        with open(partial, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the manifest says so
        return {}


class JpegShards:
    """Every image as a JPEG of the stored square, appended to one shard file per part,
    with an index of ``(shard, offset, length)`` per image (read by ``jpeg.JpegStore``)."""

    kind, suffix, what = "store", "store", "compact image store"
    version, quality = "easycls-jpeg-v1", 90
    # Upper estimate of a stored image, to check free space before a build: photos at
    # quality 90 with 4:2:0 chroma take well under half a byte per pixel (docs/large-data.md).
    bytes_per_pixel = 0.5

    def key(self, refs: Sequence[str], size: int) -> str:
        inner = FORMATS["cache"].key(refs, size)
        return hashlib.sha256(f"{self.version}\n{self.quality}\n{inner}".encode()).hexdigest()

    def estimate(self, n: int, size: int) -> int:
        return int(n * (size * size * self.bytes_per_pixel + 64))

    def open(self, path: Path, n: int, size: int, failures: dict[int, str]) -> Any:
        store = JpegStore(path, size, failures)
        return store if store.index.shape == (n, 3) else None

    def encode(self, ref: str, size: int) -> bytes | str:
        """The stored JPEG of ``ref``, or the reason it cannot be read (also what the
        streaming store keeps)."""
        try:
            pixels = load_resized(ref, size)
        except UnreadableImage as e:
            return e.reason
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue()

    def build_part(self, partial, refs, size, part, parts, progress):
        partial.mkdir(parents=True, exist_ok=True)
        span = share(len(refs), part, parts)
        index = np.zeros((len(span), 3), np.int64)
        index[:, 0] = part
        failures: dict[int, str] = {}
        writer = _ShardWriter(partial / f"shard-{part:03d}.bin")
        try:
            encoded = parallel_map(lambda i: self.encode(refs[i], size), span, None, progress)
            for k, (i, data) in enumerate(zip(span, encoded)):
                if isinstance(data, str):
                    failures[i] = data
                    continue
                index[k, 1:] = writer.write(data), len(data)
        finally:
            writer.close()
        np.save(partial / f"index-{part:03d}.npy", index)
        return failures

    def finish(self, partial, n, size, parts):
        names = [partial / f"index-{p:03d}.npy" for p in range(parts)]
        index = np.concatenate([np.load(p) for p in names])
        if index.shape != (n, 3):
            raise RuntimeError(f"store parts in {partial} hold {len(index)} of {n} images")
        np.save(partial / "index.npy", index)
        for p in names:
            p.unlink()
        return {"quality": self.quality,
                "bytes": sum(p.stat().st_size for p in partial.iterdir())}


class _ShardWriter:
    """Appends to one shard file, reserving disk space ahead of the writes."""

    grow = 64 * 2**20  # reserve in steps: few fallocate calls, little overshoot

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = self.reserved = 0

    def write(self, data: bytes) -> int:
        end = self.pos + len(data)
        if end > self.reserved:
            grow = max(end, self.reserved + self.grow) - self.reserved
            cachedir.reserve(self.fd, self.reserved, grow)
            self.reserved += grow
        offset = self.pos
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self.fd, view, self.pos):]
            self.pos = offset + len(data) - len(view)
        return offset

    def close(self) -> None:
        try:
            os.ftruncate(self.fd, self.pos)  # give back what was reserved but not used
            os.fsync(self.fd)
        finally:
            os.close(self.fd)


FORMATS: dict[str, Format] = {"cache": Uint8Cache(), "jpeg": JpegShards()}
_WORDS = {"cache": "uint8 cache", "jpeg": "compact JPEG store", "none": "decoded originals",
          "stream": "streaming store"}
# "stream": the compact store's JPEGs in litdata chunks, in $EASYCLS_STREAM_DIR (stream.py)
MODES = ("auto", *FORMATS, "stream", "none")
_STREAM_VERSION = "easycls-stream-v1"


def describe(kind: str) -> str:
    """Words for the summary line: "uint8 cache", "compact JPEG store", "decoded originals"."""
    return _WORDS[kind]


def auto_budget() -> int:
    """Largest uint8 cache chosen automatically: ``$EASYCLS_CACHE_BUDGET_GB`` (else 20 GB)."""
    return int(float(os.environ.get("EASYCLS_CACHE_BUDGET_GB") or _DEFAULT_BUDGET_GB) * 1e9)


def choose(mode: str, splits: Sequence[tuple[int, int]], group: Group = ONE,
           root: Path | None = None) -> str:
    """Where training pixels come from: ``"cache"``, ``"jpeg"`` or ``"none"``; the first
    process decides and every process takes its answer.

    ``"auto"`` takes the uint8 cache when it is within the budget
    (``$EASYCLS_CACHE_BUDGET_GB``) and the room the cache folder has (its cap and the
    disk, counting older entries as evictable), else the compact store when that fits,
    else the originals. Any other mode is returned as is (its build checks the space).

    Args:
        mode: ``"auto"``, ``"cache"``, ``"jpeg"`` or ``"none"``.
        splits: ``(number of images, stored size)`` of each split.
        group: the processes that train together.
        root: cache folder (default ``cachedir.cache_root()``).

    Example:
        >>> choose("auto", [(1_281_167, 255), (50_000, 224)])
        'jpeg'
    """
    if mode not in MODES:
        raise ValueError(f"store must be one of {', '.join(MODES)}, not {mode!r}")
    return group.broadcast(_choose(mode, splits, root) if group.rank == 0 else None)


def _choose(mode: str, splits: Sequence[tuple[int, int]], root: Path | None) -> str:
    if mode != "auto":
        return mode
    space = cachedir.room(root)
    need = {name: sum(f.estimate(n, s) for n, s in splits) for name, f in FORMATS.items()}
    if need["cache"] <= min(auto_budget(), space):
        return "cache"
    return "jpeg" if need["jpeg"] <= space else "none"


# ---------------------------------------------------------------- the one build path


def open_pixels(refs: Sequence[str], size: int, kind: str, group: Group = ONE,
                progress: bool = False, source: str = "", root: Path | None = None) -> Stored:
    """The pixels of ``refs`` at ``size`` in format ``kind``, built if missing.

    Every process of ``group`` calls it with the same arguments; each builds its share.

    Args:
        refs: image references (paths or zip refs), in dataset order.
        size: side of the stored squares.
        kind: ``"cache"``, ``"jpeg"`` or ``"none"`` (what :func:`choose` chose); with
            ``"none"`` the pixels are None (decode ``refs`` on access) and the processes
            only check their share of the images.
        group: the processes that build it together.
        progress: print a progress counter to stderr (on the first process).
        source: what the images are (shown by ``easycls cache list``).
        root: cache folder (default ``cachedir.cache_root()``).

    Raises:
        DataError: not enough disk space (nothing is left behind), the folder is not
            writable, or another process failed.

    Example:
        >>> stored = open_pixels(refs, 64, "cache")
        >>> stored.pixels.shape, stored.failures
        ((len(refs), 64, 64, 3), {})
    """
    if kind == "none":
        return Stored(None, _check_together(refs, group, progress))
    root = Path(root) if root is not None else cachedir.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    if kind == "stream":
        return _open_stream(refs, size, group, progress, source, root)
    fmt = FORMATS[kind]
    key = fmt.key(refs, size)
    found = _open(fmt, root, key, len(refs), size)
    if not any(group.gather(found is None)):
        return found
    lead = group.local_rank == 0
    with cachedir.locked(root / f"{key}.lock", f"building the {fmt.what}") if lead else (
            contextlib.nullcontext()):
        # Looked at again with the lock held: another job may have built it meanwhile.
        found = _open(fmt, root, key, len(refs), size)
        if any(group.gather(found is None)):
            _build(fmt, refs, size, root, key, group, progress and group.rank == 0, source)
            found = _open(fmt, root, key, len(refs), size)._replace(built=True)
    return found


def _open_stream(refs: Sequence[str], size: int, group: Group, progress: bool, source: str,
                 root: Path) -> Stored:
    """The streaming store (built once by the first process, with the compact store's
    encoder), read through this machine's bounded cache."""
    jpeg = FORMATS["jpeg"]
    key = hashlib.sha256(f"{_STREAM_VERSION}\n{jpeg.key(refs, size)}".encode()).hexdigest()
    pixels, failures, built, _ = stream.open_stream(
        refs, size, jpeg.encode, key, group, progress and group.rank == 0, source, root)
    return Stored(pixels, failures, built, root / f"{key}.stream")


def _open(fmt: Format, root: Path, key: str, n: int, size: int) -> Stored | None:
    """The entry ``key`` if its manifest vouches for ``n`` images at ``size``, else None."""
    meta = cachedir.read_manifest(root, key)
    path = root / f"{key}.{fmt.suffix}"
    try:
        if meta is None or (meta.get("kind", "cache"), meta["n"], meta["size"]) != (
                fmt.kind, n, size):
            return None
        failures = {int(i): str(r) for i, r in meta["failures"].items()}
        pixels = fmt.open(path, n, size, failures)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, half-written or foreign files: rebuild
    if pixels is None:
        return None
    cachedir.touch(root, key)
    return Stored(pixels, failures, False, path)


def _build(fmt: Format, refs: Sequence[str], size: int, root: Path, key: str, group: Group,
           progress: bool, source: str) -> None:
    """Build the entry with the machine's processes, each its part; publish it once."""
    n, lead = len(refs), group.local_rank == 0
    partial = root / f"{key}.{fmt.suffix}.partial-{socket.gethostname()}"
    need = fmt.estimate(n, size)

    def start() -> None:
        if lead:  # the lock is held: what is there is a crashed build's
            cachedir.make_room(root, need, fmt.what)
            for p in [root / f"{key}.json", *root.glob(f"{key}.*.partial*")]:
                cachedir.remove_path(p)

    def part() -> dict[int, str]:
        with cachedir.guarded(root, partial, need, fmt.what):
            return fmt.build_part(partial, refs, size, group.local_rank, group.local_size,
                                  progress)

    with _cleanup(lead, partial):
        _together(group, start)
        failures: dict[int, str] = {}
        for mine in group.gather(_together(group, part)):
            failures.update(mine)
        _together(group, lambda: lead and _publish(fmt, root, key, partial, n, size,
                                                   group.local_size, failures, source))


def _publish(fmt: Format, root: Path, key: str, partial: Path, n: int, size: int, parts: int,
             failures: dict[int, str], source: str) -> None:
    """Finish the build, move it into place and write the manifest that vouches for it,
    unless another machine sharing the folder already did."""
    if _open(fmt, root, key, n, size) is not None:
        cachedir.remove_path(partial)
        return
    with cachedir.guarded(root, partial, fmt.estimate(n, size), fmt.what):
        extra = fmt.finish(partial, n, size, parts)
        final = root / f"{key}.{fmt.suffix}"
        cachedir.remove_path(final)  # data without a manifest: a crashed publish
        os.replace(partial, final)
        cachedir.write_manifest(root, key, {"kind": fmt.kind, "n": n, "size": size,
                                            "failures": failures, "created": time.time(),
                                            "source": source, **extra})


def _check_together(refs: Sequence[str], group: Group, progress: bool) -> dict[int, str]:
    span = share(len(refs), group.rank, group.size)
    mine = check_images([refs[i] for i in span], progress=progress and group.rank == 0)
    failures: dict[int, str] = {}
    for part in group.gather({span.start + j: r for j, r in mine.items()}):
        failures.update(part)
    return failures


def _together(group: Group, work: Callable[[], Any]) -> Any:
    """Run ``work`` on every process; if it fails anywhere, raise everywhere."""
    error: BaseException | None = None
    result = None
    try:
        result = work()
    except Exception as e:  # noqa: BLE001  every process must reach the gather below
        error = e
    messages = group.gather(None if error is None else str(error))
    if error is not None:
        raise error
    failed = [m for m in messages if m is not None]
    if failed:
        raise DataError(f"another process failed while preparing the images: {failed[0]}")
    return result


@contextlib.contextmanager
def _cleanup(lead: bool, partial: Path):
    """On any failure, the machine's lead process deletes the half-built files."""
    try:
        yield
    except BaseException:
        if lead:
            cachedir.remove_path(partial)
        raise
