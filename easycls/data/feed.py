"""Batch-level loading: one gather per batch, run ahead in a thread, float work on the device.

fastai's `TfmdDL` builds a batch item by item: one tensor per image, a permute each,
then `torch.stack`. For a dataset whose pixels are already uint8 at their stored size
(the decoded cache, refs decoded on access, or the compact JPEG store) `FeedDL` builds
it in one go instead:

- the uint8 cache: one `np.take` of the batch's rows into one (B, S, S, 3) block
  (pinned on CUDA, a reused host buffer on CPU); `permute(0, 3, 1, 2)` of it is already
  a channels_last NCHW view, no copy;
- the JPEG store: the batch's bytes decoded in one `decode_jpegs` call (nvJPEG on CUDA);
- anything else with `pixels`: each item decoded straight into the block by threads.

That work runs in a background thread (`Prefetcher`) while the training step runs, and
on CUDA the copy to the GPU is started there too (`non_blocking=True` from pinned
memory). Float conversion, augmentation and normalization stay in `after_batch`, on
the device. The data order (`get_idxs`, the `rng`) and everything after the gather are
fastai's, so a seed gives the same batches as the item-by-item loader, and `show_batch`,
`one_batch`, `test_dl` and the DDP shard wrappers (which call `create_batches`) work.
"""

from __future__ import annotations

import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch
from fastai.data.core import TfmdDL
from fastai.torch_core import TensorCategory, TensorImage, TensorMultiCategory
from fastcore.basics import chunked

from .jpeg import decode_jpegs
from .prefetch import Prefetcher

__all__ = ["FeedDL", "batch_gather", "ArrayGather", "ItemGather", "JpegGather"]


class _HostBuffers:
    """Reuses uint8 host blocks: a fresh 50 MB block costs more in page faults than the
    copy into it. A block is free again when no tensor made from it is alive: each torch
    view holds one reference to the numpy array (CPython reference counts)."""

    _FREE = 3  # the list, the loop variable and getrefcount's own argument

    def __init__(self, keep: int):
        self.keep, self.blocks = keep, []

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        for block in self.blocks:
            if block.shape == shape and sys.getrefcount(block) <= self._FREE:
                return block
        block = np.empty(shape, dtype=np.uint8)
        if len(self.blocks) < self.keep:
            self.blocks.append(block)
        return block


def _unwrap(array) -> tuple:
    """(base, rows): a row view (`cache.Rows`, possibly nested) as its base and the base
    rows it shows, so a batch is still one read of the base."""
    rows = None
    while not isinstance(array, np.ndarray) and hasattr(array, "base") and hasattr(array, "rows"):
        r = np.asarray(array.rows, dtype=np.int64)
        rows, array = (r if rows is None else r[rows]), array.base
    return array, rows


class _Gather:
    """Reads batches of dataset positions `idxs` (mapped through `rows`) onto `device`."""

    def __init__(self, device: torch.device, rows: np.ndarray | None, n: int):
        self.device, self.rows, self.n = device, rows, n

    def _positions(self, idxs: np.ndarray) -> np.ndarray:
        if len(idxs) and (idxs.min() < 0 or idxs.max() >= self.n):
            raise IndexError(f"batch indices outside 0..{self.n - 1}")
        return idxs if self.rows is None else self.rows[idxs]

    def _host_block(self, shape) -> torch.Tensor:
        # On CUDA, torch's caching host allocator hands out pinned blocks and reuses one
        # only after the copies recorded on it are done: copy from this very tensor, never
        # from a numpy view of it (the allocator would not see that copy).
        if self.device.type == "cuda":
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        return torch.from_numpy(self.buffers.get(shape))

    def _to_device(self, block: torch.Tensor) -> torch.Tensor:
        """The (B, S, S, 3) host block as a (B, 3, S, S) channels_last view on the device."""
        return block.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def close(self) -> None:
        pass


class ArrayGather(_Gather):
    """Rows of a (N, S, S, 3) uint8 array (a memory map) as one (B, 3, S, S) view on `device`."""

    def __init__(self, array: np.ndarray, device: torch.device, rows: np.ndarray | None = None,
                 keep: int = 6):
        super().__init__(device, rows, len(rows) if rows is not None else len(array))
        self.array, self.buffers = array, _HostBuffers(keep)

    def __call__(self, idxs: np.ndarray) -> torch.Tensor:
        pos = self._positions(idxs)
        block = self._host_block((len(pos), *self.array.shape[1:]))
        # mode="clip" (indices checked above): numpy buffers `out` under the default "raise"
        np.take(self.array, pos, axis=0, out=block.numpy(), mode="clip")
        return self._to_device(block)


class ItemGather(_Gather):
    """Items decoded on access (`pixels[i]` -> (S, S, 3) uint8), written into one block by
    threads."""

    def __init__(self, pixels, device: torch.device, workers: int = 1):
        super().__init__(device, None, len(pixels))
        self.pixels, self.workers, self._pool = pixels, max(1, workers), None

    def __call__(self, idxs: np.ndarray) -> torch.Tensor:
        idxs = self._positions(idxs)
        first = np.asarray(self.pixels[int(idxs[0])])
        block = np.empty((len(idxs), *first.shape), dtype=np.uint8)
        block[0] = first

        def one(k: int) -> None:
            block[k] = self.pixels[int(idxs[k])]

        if self.workers > 1 and len(idxs) > 2:
            self._pool = self._pool or ThreadPoolExecutor(self.workers, "easycls-decode")
            list(self._pool.map(one, range(1, len(idxs))))
        else:
            for k in range(1, len(idxs)):
                one(k)
        x = torch.from_numpy(block)
        return self._to_device(x.pin_memory() if self.device.type == "cuda" else x)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class JpegGather(_Gather):
    """A batch of the compact JPEG store (`store.read(indices)` -> JPEG bytes of
    `store.size` squares, empty for an unreadable image): decoded in one nvJPEG call on
    the GPU when `device` is CUDA, else (or if nvJPEG fails) with `store.decode_batch`
    in `workers` threads into one host block, like the cache path."""

    def __init__(self, store, device: torch.device, rows: np.ndarray | None = None,
                 workers: int = 1, keep: int = 6):
        super().__init__(device, rows, len(rows) if rows is not None else len(store))
        self.store, self.workers, self.buffers = store, max(1, workers), _HostBuffers(keep)
        self.on_gpu = device.type == "cuda"

    def __call__(self, idxs: np.ndarray) -> torch.Tensor:
        pos = self._positions(idxs)
        if self.on_gpu:
            try:
                return self._gpu(self.store.read(pos))
            except RuntimeError as e:  # a torchvision without nvJPEG: decode on the CPU instead
                warnings.warn(f"GPU JPEG decoding failed ({e}); decoding on the CPU", stacklevel=2)
                self.on_gpu = False
        block = self._host_block((len(pos), self.store.size, self.store.size, 3))
        self.store.decode_batch(pos, out=block.numpy(), workers=self.workers)
        return self._to_device(block)

    def _gpu(self, blobs: list[bytes]) -> torch.Tensor:
        size, good = self.store.size, [k for k, b in enumerate(blobs) if b]
        if len(good) == len(blobs):
            return decode_jpegs(blobs, size, self.device)
        out = torch.zeros((len(blobs), 3, size, size), dtype=torch.uint8, device=self.device)
        if good:  # unreadable images are zeros, as the cache and store.decode_batch give them
            out[good] = decode_jpegs([blobs[k] for k in good], size, self.device)
        return out


def _pixels_and_targets(dataset) -> tuple:
    """`dataset.pixels` and `.targets` when item i is exactly (pixels[i], targets[i]), else
    (None, None). A fastai `Datasets` must hold the items 0..n-1 (a `test_dl` of paths,
    say, holds paths: it is then loaded item by item)."""
    try:
        pixels, targets, n = dataset.pixels, dataset.targets, len(dataset)
    except (AttributeError, IndexError, TypeError):
        return None, None
    if pixels is None or targets is None or not n == len(pixels) == len(targets):
        return None, None
    for tl in getattr(dataset, "tls", []):
        items = getattr(tl, "items", None)
        if items is None or len(items) != n or any(
                not isinstance(items[i], (int, np.integer)) or items[i] != i for i in (0, n - 1)):
            return None, None
    return pixels, targets


def batch_gather(dataset, device: torch.device, workers: int = 1):
    """The batch-level reader for `dataset`, or None when it exposes no `pixels` and
    `targets` (then `FeedDL` loads item by item, as fastai does).

    `dataset.pixels` may be a `Pixels` whose `array` is a uint8 array, a JPEG store, or a
    row view of either (`cache.Rows`); or a store itself; or anything indexable by item.
    """
    pixels, targets = _pixels_and_targets(dataset)
    if pixels is None:
        return None
    array = getattr(pixels, "array", None)
    base, rows = _unwrap(array if array is not None else pixels)
    if isinstance(base, np.ndarray) and base.ndim == 4:
        return ArrayGather(base, device, rows)
    if hasattr(base, "read") and hasattr(base, "decode_batch"):
        return JpegGather(base, device, rows, workers)
    return ItemGather(pixels, device, workers)


class FeedDL(TfmdDL):
    """A fastai `TfmdDL` that reads whole batches ahead of the training step.

    Args:
        dataset: items as for `TfmdDL`; the batch-level path needs `dataset.pixels`
            (uint8 images at their stored size) and `dataset.targets` (an array).
        workers: decoding threads (refs or JPEGs on the CPU); the uint8 cache needs none.
        prefetch: batches made ahead in a background thread (0: made on demand, no thread).
        **kwargs: `TfmdDL`'s (bs, shuffle, drop_last, after_batch, device, ...);
            `num_workers` is taken as `workers`: batches are made by threads, not processes.

    Example:
        >>> dl = FeedDL(train_ds, bs=256, shuffle=True, after_batch=tfms, device="cuda")
        >>> xb, yb = dl.one_batch()
    """

    def __init__(self, dataset=None, bs: int = 64, workers: int | None = None, prefetch: int = 2,
                 **kwargs):
        num_workers = kwargs.pop("num_workers", None)
        kwargs.pop("persistent_workers", None)
        kwargs["pin_memory"] = False  # pinned here, per batch, in the prefetch thread
        super().__init__(dataset, bs=bs, num_workers=0, **kwargs)
        self.workers = max(1, workers if workers is not None else (num_workers or 1))
        self.prefetch = prefetch

    def new(self, dataset=None, cls=None, **kwargs):
        kwargs = {"workers": self.workers, "prefetch": self.prefetch, **kwargs}
        return super().new(dataset, cls, **kwargs)

    @property
    def batch_level(self) -> bool:
        """True when batches are gathered whole (else item by item, as in fastai)."""
        return (
            self.bs is not None
            and len(self.after_item.fs) == 0
            and len(self.before_batch.fs) == 0
            and batch_gather(self.dataset, torch.device("cpu")) is not None
        )

    def create_batches(self, samps):
        if not self.batch_level:
            yield from super().create_batches(samps)
            return
        gather = self._reader()
        batches = (self._load(gather, np.fromiter(chunk, dtype=np.int64))
                   for chunk in chunked(samps, self.bs, self.drop_last))
        try:
            if self.prefetch <= 0:
                yield from batches
            else:
                with Prefetcher(batches, self.prefetch) as ready:
                    yield from ready
        finally:
            gather.close()

    def shuffle_fn(self, idxs):
        # A store read a chunk at a time (the streaming store) orders an epoch by chunks:
        # each chunk is downloaded once, not once per batch that touches it.
        base, rows = _unwrap(getattr(getattr(self.dataset, "pixels", None), "array", None))
        if not hasattr(base, "shuffled") or len(idxs) != len(self.dataset):
            return super().shuffle_fn(idxs)
        rows = np.arange(len(idxs)) if rows is None else rows
        return base.shuffled(rows, self.rng.getrandbits(32)).tolist()

    def _reader(self):
        # Kept across epochs: its reused host blocks are what make a gather cheap.
        device = self.device or torch.device("cpu")
        key = (id(self.dataset), device, self.workers)
        if getattr(self, "_reader_key", None) != key:
            self._gather, self._reader_key = batch_gather(self.dataset, device, self.workers), key
        return self._gather

    def __getstate__(self) -> dict:
        # Buffers and thread pools stay behind when the loader is pickled (learn.export).
        return {k: v for k, v in self.__dict__.items() if k not in ("_gather", "_reader_key")}

    def _load(self, gather, idxs: np.ndarray) -> tuple:
        device = self.device or torch.device("cpu")
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            x = gather(idxs)
            y = torch.from_numpy(np.ascontiguousarray(np.asarray(self.dataset.targets)[idxs]))
            if device.type == "cuda":
                y = y.pin_memory().to(device, non_blocking=True)
        return TensorImage(x), self._target_type()(y)

    def _target_type(self) -> type:
        # The type the item-by-item path gives the targets, so decodes and metrics see the same.
        if not hasattr(self, "_ytype"):
            t = self.dataset[0][1] if len(self.dataset) else None
            multi = np.asarray(self.dataset.targets).ndim == 2
            fallback = TensorMultiCategory if multi else TensorCategory
            self._ytype = type(t) if isinstance(t, torch.Tensor) else fallback
        return self._ytype
