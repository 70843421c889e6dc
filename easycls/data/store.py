"""Compact image store: every image decoded once, resized, and kept as a small JPEG.

For data whose decoded uint8 cache would not fit (ImageNet at 224 px is about 258 GB
as uint8), each image is decoded once, scaled and center-cropped to the stored square
size exactly as the uint8 cache does, re-encoded as a JPEG (quality 90) and appended to
a few large shard files, with an index of ``(shard, offset, length)`` per image, in the
spirit of FFCV's and webdataset's stores. Training then decodes small JPEGs instead of
the full-size originals; the pixels match the cache's up to JPEG's loss.

A store is the folder ``<key>.store`` (``shard-NNN.bin``, ``index.npy``) in the cache
folder plus its ``<key>.json`` manifest, written last. A build writes into
``<key>.store.partial-<host>``, reserves space as its shards grow, and is renamed into
place when complete; a failed build deletes it (see ``cachedir.guarded_build``).
Several processes on one machine can build one store together: each encodes a
contiguous part (:func:`build_part`), then one of them calls :func:`finish`.

Reading API, for DataLoader workers and batch loaders (also a GPU decoder):
``store[i]`` and ``store.decode_batch(indices)`` give uint8 HWC / NHWC arrays,
``store.jpeg_bytes(indices)`` (alias ``read``) the raw JPEG bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from . import cachedir
from .cache import auto_budget, cache_key, estimate_bytes
from .images import UnreadableImage, load_resized, parallel_map
from .locks import open_or_build

__all__ = [
    "STORE_MODES",
    "JpegStore",
    "choose_store",
    "build_part",
    "estimate_store_bytes",
    "finish",
    "load_or_build_store",
    "open_store",
    "partial_dir",
    "store_key",
]

FORMAT_VERSION = "easycls-jpeg-v1"
QUALITY = 90
STORE_MODES = ("auto", "cache", "jpeg", "none")
_GROW = 64 * 2**20  # reserve shard space in steps: few fallocate calls, little overshoot
# Upper estimate of a stored image, used to check free space before a build: photos at
# quality 90 with 4:2:0 chroma take well under half a byte per pixel (see docs/large-data.md).
_BYTES_PER_PIXEL = 0.5


def store_key(refs: Sequence[str], size: int) -> str:
    """Hex sha256 naming the store of ``refs`` at ``size`` (distinct from the cache's key)."""
    inner = cache_key(refs, size)
    return hashlib.sha256(f"{FORMAT_VERSION}\n{QUALITY}\n{inner}".encode()).hexdigest()


def estimate_store_bytes(n: int, size: int) -> int:
    """A generous estimate of the bytes a store of ``n`` images at ``size`` takes."""
    return int(n * (size * size * _BYTES_PER_PIXEL + 64))


def choose_store(mode: str, splits: Sequence[tuple[int, int]],
                 root: Path | None = None) -> str:
    """Where training pixels come from: ``"cache"`` (uint8), ``"jpeg"`` (compact store)
    or ``"none"`` (the originals, decoded every epoch).

    ``"auto"`` takes the uint8 cache when it is within the budget
    (``$EASYCLS_CACHE_BUDGET_GB``) and the room the cache folder has (its cap and the
    disk, counting older entries as evictable), else the compact store when that fits,
    else the originals. Any other mode is returned as is (its build checks the space).

    Args:
        mode: ``"auto"``, ``"cache"``, ``"jpeg"`` or ``"none"``.
        splits: ``(number of images, stored size)`` of each split.
        root: cache folder (default ``cachedir.cache_root()``).

    Example:
        >>> choose_store("auto", [(1_281_167, 255), (50_000, 224)])
        'jpeg'
    """
    if mode not in STORE_MODES:
        raise ValueError(f"store must be one of {', '.join(STORE_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    space = cachedir.room(root)
    if sum(estimate_bytes(n, s) for n, s in splits) <= min(auto_budget(), space):
        return "cache"
    if sum(estimate_store_bytes(n, s) for n, s in splits) <= space:
        return "jpeg"
    return "none"


# ---------------------------------------------------------------- reading


@functools.lru_cache(maxsize=1)
def _cpu_decoder():
    """torchvision's libjpeg-turbo decoder (about twice Pillow's images per CPU-second on
    small JPEGs, see docs/large-data.md), or None to fall back to Pillow."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, RuntimeError, OSError):
        return None

    def decode(data: bytes) -> np.ndarray:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return decode_jpeg(raw, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    return decode


class JpegStore:
    """A built store: ``len(store)`` images of ``size`` x ``size`` RGB pixels.

    Attributes:
        path: the store folder.
        size: side of the stored squares.
        failures: ``{index: reason}`` for unreadable images; they decode to zeros.

    Example:
        >>> store = load_or_build_store(refs, 73)
        >>> store[0].shape, store.decode_batch([0, 5]).shape
        ((73, 73, 3), (2, 73, 73, 3))
    """

    def __init__(self, path: str | os.PathLike, size: int, failures: dict[int, str],
                 built: bool = False):
        self.path, self.size, self.failures, self.built = Path(path), size, failures, built
        self.index = np.load(self.path / "index.npy", mmap_mode="r")
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # Workers reopen the files: descriptors and memory maps must not be pickled.
        return dict(path=self.path, size=self.size, failures=self.failures, built=self.built)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._fds.values():
                os.close(fd)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: never share the parent's descriptors
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.path / f"shard-{shard:03d}.bin", os.O_RDONLY)
        return fd

    def read(self, indices: Sequence[int] | np.ndarray) -> list[bytes]:
        """The stored JPEG bytes of each index (empty bytes for an unreadable image)."""
        out = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            shard, offset, length = (int(v) for v in self.index[i])
            out.append(os.pread(self._fd(shard), length, offset) if length else b"")
        return out

    jpeg_bytes = read  # the name batch loaders (and GPU decoders) ask for

    def _decode_into(self, data: bytes, out: np.ndarray) -> None:
        if not data:
            out[...] = 0
            return
        decode = _cpu_decoder()
        if decode is None:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                out[...] = np.asarray(img)
        else:
            out[...] = decode(data)

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as a uint8 ``(size, size, 3)`` array."""
        out = np.empty((self.size, self.size, 3), np.uint8)
        self._decode_into(self.read([i])[0], out)
        return out

    def decode_batch(self, indices: Sequence[int] | np.ndarray, out: np.ndarray | None = None,
                     workers: int = 1) -> np.ndarray:
        """Images as one uint8 ``(B, size, size, 3)`` array, decoded on the CPU.

        Args:
            indices: which images.
            out: an array to fill (e.g. pinned memory), else a new one.
            workers: decoding threads (Pillow releases the GIL while decoding).
        """
        blobs = self.read(indices)
        if out is None:
            out = np.empty((len(blobs), self.size, self.size, 3), np.uint8)
        if workers > 1 and len(blobs) > 1:
            list(parallel_map(lambda k: self._decode_into(blobs[k], out[k]), range(len(blobs)),
                              workers))
        else:
            for k, data in enumerate(blobs):
                self._decode_into(data, out[k])
        return out

    def __getitem__(self, i):
        """``store[i]``: one image; ``store[[i, j, ...]]``: a batch (like a uint8 array)."""
        if isinstance(i, (int, np.integer)):
            return self.decode(int(i))
        return self.decode_batch(i)

    @property
    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("shard-*.bin"))


def open_store(root: Path, key: str, n: int, size: int) -> JpegStore | None:
    """The complete store ``key`` if its manifest matches ``n`` and ``size``, else None."""
    meta = cachedir.read_manifest(root, key)
    try:
        if meta is None or (meta["kind"], meta["n"], meta["size"]) != ("store", n, size):
            return None
        failures = {int(i): str(r) for i, r in meta["failures"].items()}
        store = JpegStore(root / f"{key}.store", size, failures)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if store.index.shape != (n, 3):
        return None
    cachedir.touch(root, key)
    return store


# ---------------------------------------------------------------- building


def _encode(ref: str, size: int) -> bytes | str:
    """The stored JPEG of ``ref``, or the reason it cannot be read."""
    try:
        pixels = load_resized(ref, size)
    except UnreadableImage as e:
        return e.reason
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


class _ShardWriter:
    """Appends to one shard file, reserving disk space ahead of the writes."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = self.reserved = 0

    def write(self, data: bytes) -> int:
        end = self.pos + len(data)
        if end > self.reserved:
            grow = max(end, self.reserved + _GROW) - self.reserved
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


def partial_dir(root: Path, key: str) -> Path:
    """Where a store is built: one folder per machine (nodes may share the cache folder)."""
    return Path(root) / f"{key}.store.partial-{socket.gethostname()}"


def _part_range(n: int, part: int, parts: int) -> range:
    return range(n * part // parts, n * (part + 1) // parts)


def build_part(refs: Sequence[str], size: int, build_dir: Path, part: int = 0, parts: int = 1,
               workers: int | None = None, progress: bool = False) -> dict[int, str]:
    """Encode this process's contiguous share of ``refs`` into ``shard-<part>.bin``.

    Writes ``index-<part>.npy`` and ``failures-<part>.json`` next to it. Returns the failures.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    span = _part_range(len(refs), part, parts)
    index = np.zeros((len(span), 3), np.int64)
    index[:, 0] = part
    failures: dict[int, str] = {}
    writer = _ShardWriter(build_dir / f"shard-{part:03d}.bin")
    try:
        encoded = parallel_map(lambda i: _encode(refs[i], size), span, workers, progress)
        for k, (i, data) in enumerate(zip(span, encoded)):
            if isinstance(data, str):
                failures[i] = data
                continue
            index[k, 1:] = writer.write(data), len(data)
    finally:
        writer.close()
    np.save(build_dir / f"index-{part:03d}.npy", index)
    (build_dir / f"failures-{part:03d}.json").write_text(json.dumps(failures))
    return failures


def finish(root: Path, key: str, build_dir: Path, n: int, size: int, parts: int,
           source: str = "") -> None:
    """Join the parts' indexes, move the store into place and write its manifest."""
    index = np.concatenate([np.load(build_dir / f"index-{p:03d}.npy") for p in range(parts)])
    if index.shape != (n, 3):
        raise RuntimeError(f"store parts in {build_dir} hold {len(index)} of {n} images")
    failures: dict[str, str] = {}
    for p in range(parts):
        failures.update(json.loads((build_dir / f"failures-{p:03d}.json").read_text()))
        (build_dir / f"index-{p:03d}.npy").unlink()
        (build_dir / f"failures-{p:03d}.json").unlink()
    np.save(build_dir / "index.npy", index)
    final = root / f"{key}.store"
    cachedir.remove_path(final)  # a store without a manifest: a crashed finish
    os.replace(build_dir, final)
    cachedir.write_manifest(
        root,
        key,
        {
            "kind": "store",
            "n": n,
            "size": size,
            "failures": failures,
            "created": time.time(),
            "source": source,
            "quality": QUALITY,
            "bytes": sum(p.stat().st_size for p in final.iterdir()),
        },
    )


def load_or_build_store(refs: Sequence[str], size: int, root: str | os.PathLike | None = None,
                        workers: int | None = None, progress: bool = True,
                        source: str = "") -> JpegStore:
    """Reuse the compact store of ``refs`` at ``size``, or build it (one process).

    Args:
        refs: image references (paths or zip refs), in dataset order.
        size: side of the stored squares (the training store size).
        root: cache folder (default ``cachedir.cache_root()``).
        workers: encoding threads (default: all cores).
        progress: print a progress counter to stderr while building.
        source: what the images are (shown by ``easycls cache list``).

    Raises:
        DataError: not enough disk space (nothing is left behind), or the folder is not
            writable.
    """
    if not refs:
        raise ValueError("load_or_build_store needs at least one image reference")
    root = Path(root) if root is not None else cachedir.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = store_key(refs, size)

    def build() -> JpegStore:
        build_dir = partial_dir(root, key)
        need = estimate_store_bytes(len(refs), size)
        with cachedir.guarded_build(root, build_dir, need, "compact image store"):
            cachedir.remove_path(build_dir)  # a crashed build's leftovers
            build_part(refs, size, build_dir, 0, 1, workers, progress)
            finish(root, key, build_dir, len(refs), size, 1, source)
        store = open_store(root, key, len(refs), size)
        store.built = True
        return store

    return open_or_build(root / f"{key}.lock", "compact image store",
                         lambda: open_store(root, key, len(refs), size), build)
