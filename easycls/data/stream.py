"""The streaming store: the compact store's JPEGs in litdata chunks, built once, read by every node.

The store is written once (by the first process of a run, or by one job) into
``$EASYCLS_STREAM_DIR``: a prefix in object storage (``s3://bucket/streams``) or a shared
folder. It is litdata's format (``index.json`` and ``chunk-*.bin``, see
https://github.com/Lightning-AI/litData) plus ``easycls.json``, the manifest that is
written last and vouches for the rest. Each image is the same JPEG the compact store keeps
(the encoder is passed in by ``storage``: there is one encoder).

Every process reads it through litdata's ``StreamingDataset``, whose local cache of chunks
(a folder in the cache folder) is bounded: chunks are evicted once it passes its size, so
a dataset larger than a node's disk trains. The reader is a ``jpeg.JpegStore`` whose bytes
come from the chunks, so the batch loaders decode it as they decode the compact store; the
training order visits the chunks in a shuffled order and shuffles the images of a few
chunks at a time (:meth:`StreamStore.shuffled`), so each chunk is downloaded once an epoch.

Chunks are fetched through fsspec (``remote.read_bytes``: the same endpoint, credentials,
bounded retries and one-line errors as an ``s3://`` source), registered as litdata's
downloader for the schemes easycls reads.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..job import Group, environ_set
from . import cachedir, remote
from .images import parallel_map
from .items import DataError
from .jpeg import JpegStore

__all__ = ["stream_root", "chunk_bytes", "read_manifest", "build", "StreamStore", "MANIFEST",
           "open_stream"]

MANIFEST = "easycls.json"
_DEFAULT_CHUNK_MB = 32.0
_REREADS = 3
_LITDATA_SCHEMES = ("s3://", "gs://")  # URL prefixes litdata itself streams from


def stream_root(default: Path) -> str:
    """Where streaming stores are built: ``$EASYCLS_STREAM_DIR`` (a URL or a shared folder),
    else ``default`` (a folder of this machine)."""
    return (os.environ.get("EASYCLS_STREAM_DIR") or str(default)).rstrip("/")


def chunk_bytes() -> int:
    """Bytes per chunk of a new store: ``$EASYCLS_STREAM_CHUNK_MB`` (default 32)."""
    return int(float(os.environ.get("EASYCLS_STREAM_CHUNK_MB") or _DEFAULT_CHUNK_MB) * 1e6)


def _read(where: str, name: str) -> bytes:
    if remote.is_remote(where):
        return remote.read_bytes(f"{where}/{name}")
    return (Path(where) / name).read_bytes()


def read_manifest(where: str) -> dict | None:
    """The manifest of the store at ``where``, or None when there is no finished store."""
    try:
        meta = json.loads(_read(where, MANIFEST))
    except (FileNotFoundError, remote.MissingObject, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _publish(path: Path, where: str) -> None:
    """Move a finished file of the build to ``where`` (uploaded, or moved into the folder)."""
    if remote.is_remote(where):
        remote.write_bytes(f"{where}/{path.name}", path.read_bytes())
        path.unlink()
    else:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), Path(where) / path.name)


def _one_writer():
    """Tell litdata's writer it is the only one (it otherwise counts the torch process group
    as writers and waits for their indexes), as its own ``optimize`` workers are told."""
    return environ_set(DATA_OPTIMIZER_GLOBAL_RANK="0", DATA_OPTIMIZER_NUM_WORKERS="1",
                       DATA_OPTIMIZER_NUM_NODES="1")


def build(refs: Sequence[str], size: int, encode: Callable[[str, int], bytes | str], where: str,
          staging: Path, progress: bool = False, source: str = "") -> dict:
    """Write the store of ``refs`` at ``size`` to ``where``; its manifest.

    Chunks are staged in ``staging`` (a local folder) and moved to ``where`` as each one is
    finished, so the builder's disk holds about one chunk; the manifest comes last.

    Args:
        refs: image references, in dataset order.
        size: side of the stored squares.
        encode: ``(ref, size) -> JPEG bytes``, or the reason the image cannot be read.
        where: the store's URL or folder.
        staging: a local folder for the chunk being written.
        progress: print a progress counter.
        source: what the images are (kept in the manifest).
    """
    BinaryWriter = _litdata().streaming.writer.BinaryWriter
    failures: dict[int, str] = {}
    chunk = chunk_bytes()
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging) as tmp, _one_writer():
        # its progress messages go to a queue nobody reads, not to stdout
        writer = BinaryWriter(tmp, chunk_bytes=chunk, msg_queue=queue.SimpleQueue())
        encoded = parallel_map(lambda i: encode(refs[i], size), range(len(refs)), None, progress)
        for i, data in enumerate(encoded):
            if isinstance(data, str):
                failures[i], data = data, b""
            if (written := writer.add_item(i, {"jpeg": data})) is not None:
                _publish(Path(written), where)
        for written in writer.done():
            _publish(Path(written), where)
        writer.merge(num_workers=1)
        index = json.loads((Path(tmp) / "index.json").read_text())
        _publish(Path(tmp) / "index.json", where)
    meta = {"kind": "stream", "n": len(refs), "size": size, "failures": failures,
            "created": time.time(), "source": source, "chunk_bytes": chunk,
            "chunks": [c["chunk_size"] for c in index["chunks"]],
            "bytes": sum(c["chunk_bytes"] for c in index["chunks"])}
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        (Path(tmp) / MANIFEST).write_text(json.dumps(meta))
        _publish(Path(tmp) / MANIFEST, where)
    return meta


def _litdata() -> Any:
    """The litdata package, or a one-line error saying how to install it."""
    try:
        import litdata
        import litdata.streaming.writer  # noqa: F401
    except ImportError as e:
        raise DataError(f"--store stream needs litdata ({e}): install it with "
                        "`pip install 'easycls[stream]'`") from None
    return litdata


def _register_fetch() -> None:
    """Make litdata fetch chunks through ``remote`` (fsspec): from the endpoint, with the
    credentials and bounded retries, that an ``s3://`` source uses (litdata's own S3 path
    cannot reach a plain-HTTP endpoint such as a local MinIO)."""
    from litdata.streaming.downloader import Downloader, register_downloader

    class Fetch(Downloader):
        def download_file(self, remote_filepath: str, local_filepath: str) -> None:
            if os.path.exists(local_filepath):
                return
            data = remote.read_bytes(remote_filepath)
            tmp = self._temp_download_path(local_filepath)
            os.makedirs(os.path.dirname(local_filepath) or ".", exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            self._publish_file(tmp, local_filepath)

    for prefix in _LITDATA_SCHEMES:
        register_downloader(prefix, Fetch, overwrite=True)


class StreamStore(JpegStore):
    """A streaming store as a ``JpegStore``: ``read(indices)`` gives the JPEG bytes (from the
    chunks, downloaded into a local cache of at most ``max_bytes``), and the decoding is the
    compact store's.

    Attributes:
        where: the store's URL or folder.
        cache_dir: this machine's cache of chunks.
        max_bytes: litdata's cache size (chunks are evicted past it).
    """

    def __init__(self, where: str, size: int, failures: dict[int, str], chunks: list[int],
                 cache_dir: str | os.PathLike, max_bytes: int):
        self.where, self.size, self.failures = where, size, failures
        self.chunks, self.cache_dir, self.max_bytes = list(chunks), Path(cache_dir), max_bytes
        self.index = np.zeros((sum(self.chunks), 3), np.int64)  # the shape JpegShards checks
        self._chunk_of = np.repeat(np.arange(len(self.chunks)), self.chunks)
        self._ds, self._pid, self._lock = None, os.getpid(), threading.Lock()

    def __getstate__(self) -> dict:
        return dict(where=self.where, size=self.size, failures=self.failures,
                    chunks=self.chunks, cache_dir=self.cache_dir, max_bytes=self.max_bytes)

    def __del__(self) -> None:
        pass  # no descriptors of its own: litdata keeps the files

    def _dataset(self) -> Any:
        if self._ds is None or self._pid != os.getpid():
            StreamingDataset = _litdata().StreamingDataset
            _register_fetch()
            quiet = logging.getLogger("litdata")
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # its advice on cache sizes assumes its own chunks
            try:
                ds = StreamingDataset(self.where, cache_dir=str(self.cache_dir),
                                      max_cache_size=self.max_bytes)
                ds[0]  # opens the cache, so that whole chunks are kept in it (not byte ranges)
                ds.on_demand_bytes = False
            finally:
                quiet.setLevel(level)
            self._ds, self._pid = ds, os.getpid()
        return self._ds

    def read(self, indices: Sequence[int] | np.ndarray) -> list[bytes]:
        with self._lock:
            return [self._item(int(i)) for i in np.asarray(indices).reshape(-1)]

    def _item(self, i: int) -> bytes:
        # Going back to a chunk read before (validation, fastai's one_batch) can meet
        # litdata's deletion of that chunk. Its reader still counts the chunk as present and
        # would not fetch it again, so a fresh dataset (a fresh reader) downloads it again.
        for attempt in range(_REREADS + 1):
            try:
                return bytes(self._dataset()[i]["jpeg"])
            except FileNotFoundError:
                if attempt == _REREADS:
                    raise
                self._ds = None
            except RuntimeError as e:  # litdata's download thread died: say why, in one line
                if isinstance(e.__cause__, DataError):
                    raise e.__cause__ from None
                raise
        raise AssertionError("unreachable")

    def shuffled(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """A training order of the positions ``0..len(rows)-1`` (``rows``: the store's row of
        each position): the chunks in a random order, the images of each chunk shuffled. The
        chunks are read one after the other (litdata drops a chunk from the cache once the
        reads move to the next one), so each is downloaded once an epoch."""
        rng = np.random.default_rng(seed)
        rank = rng.permutation(len(self.chunks))  # the place of each chunk in the epoch
        return np.lexsort((rng.random(len(rows)), rank[self._chunk_of[rows]]))

    @property
    def nbytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.cache_dir.rglob("*") if p.is_file())


def _local_budget(meta: dict, where: str) -> int:
    """Bytes of this machine's cache for the store: all of it when it fits, else half the
    cache cap (the other half for the other split); chunks in flight get room on top."""
    chunk = int(meta["chunk_bytes"])
    whole = int(meta["bytes"]) + 2 * chunk
    budget = min(whole, cachedir.cache_cap() // 2)
    if budget < min(whole, 4 * chunk):
        raise DataError(
            f"the cache cap (EASYCLS_CACHE_MAX_GB) leaves {budget / 1e6:.2f} MB for the "
            f"streaming store {where}, less than four of its {chunk / 1e6:.2f} MB chunks: "
            "raise EASYCLS_CACHE_MAX_GB, or rebuild the store with smaller chunks "
            "(EASYCLS_STREAM_CHUNK_MB)")
    return budget


def open_stream(refs: Sequence[str], size: int, encode: Callable[[str, int], bytes | str],
                key: str, group: Group, progress: bool, source: str, root: Path
                ) -> tuple[StreamStore, dict[int, str], bool, str]:
    """The streaming store of ``refs`` at ``size``, built by the group's first process if
    ``$EASYCLS_STREAM_DIR`` lacks it; every process opens it with this machine's bounded
    cache (an entry ``<key>.stream`` of the cache folder ``root``).

    Returns:
        (reader, ``{index: reason}`` of unreadable images, whether this call built it,
        the store's URL or folder).
    """
    where = f"{stream_root(root / 'streams')}/{key}"
    meta, error = None, None
    if group.rank == 0:
        try:
            meta = read_manifest(where)
            if meta is None or (meta.get("n"), meta.get("size")) != (len(refs), size):
                meta = dict(build(refs, size, encode, where, root, progress, source), built=1)
        except Exception as e:  # noqa: BLE001  every process must reach the broadcast
            error = e
    answer = group.broadcast(meta if error is None else f"error: {error}")
    if error is not None:
        raise error
    if isinstance(answer, str):
        raise DataError(f"the first process failed to build the streaming store: {answer}")
    budget = _local_budget(answer, where)
    if group.local_rank == 0:
        cachedir.make_room(root, budget, "streaming store's cache")
        cachedir.write_manifest(root, key, {
            "kind": "stream", "n": len(refs), "size": size, "failures": {},
            "created": time.time(), "source": f"{source} ({where})"})
    failures = {int(i): str(r) for i, r in answer["failures"].items()}
    store = StreamStore(where, size, failures, answer["chunks"], root / f"{key}.stream",
                        budget - 2 * int(answer["chunk_bytes"]))
    return store, failures, bool(answer.get("built")) and group.rank == 0, where
