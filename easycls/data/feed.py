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


class ArrayGather:
    """Rows of a (N, S, S, 3) uint8 array (a memory map) as one (B, 3, S, S) view on `device`."""

    def __init__(self, array: np.ndarray, device: torch.device, keep: int = 6):
        self.array, self.device, self.buffers = array, device, _HostBuffers(keep)

    def _block(self, shape) -> torch.Tensor:
        if self.device.type == "cuda":  # torch's caching host allocator reuses pinned blocks
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        return torch.from_numpy(self.buffers.get(shape))

    def __call__(self, idxs: np.ndarray) -> torch.Tensor:
        if len(idxs) and (idxs.min() < 0 or idxs.max() >= len(self.array)):
            raise IndexError(f"batch indices outside 0..{len(self.array) - 1}")
        block = self._block((len(idxs), *self.array.shape[1:]))
        # mode="clip" (indices checked above): numpy buffers `out` under the default "raise"
        np.take(self.array, idxs, axis=0, out=block.numpy(), mode="clip")
        return block.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def close(self) -> None:
        pass


class ItemGather:
    """Items decoded on access (`pixels[i]` -> (S, S, 3) uint8), written into one block by threads."""

    def __init__(self, pixels, device: torch.device, workers: int = 1):
        self.pixels, self.device, self.workers, self._pool = pixels, device, max(1, workers), None

    def __call__(self, idxs: np.ndarray) -> torch.Tensor:
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
        x = x.pin_memory() if self.device.type == "cuda" else x
        return x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class JpegGather:
    """A batch of the compact JPEG store, decoded in one call: on the GPU (nvJPEG) when
    `device` is CUDA, else (or if nvJPEG fails) with libjpeg-turbo in `workers` threads.

    `store.jpeg_bytes(indices)` returns the encoded images in the order asked for, each
    with its short side at `store.size`.
    """

    def __init__(self, store, device: torch.device, workers: int = 1):
        self.store, self.device, self.workers = store, device, max(1, workers)
        self.on_gpu = device.type == "cuda"

    def __call__(self, idxs: np.ndarray) -> torch.Tensor:
        blobs = self.store.jpeg_bytes([int(i) for i in idxs])
        if self.on_gpu:
            try:
                return decode_jpegs(blobs, self.store.size, self.device)
            except RuntimeError as e:  # a torchvision without nvJPEG: decode on the CPU instead
                warnings.warn(f"GPU JPEG decoding failed ({e}); decoding on the CPU", stacklevel=2)
                self.on_gpu = False
        x = decode_jpegs(blobs, self.store.size, "cpu", self.workers)
        x = x.pin_memory() if self.device.type == "cuda" else x
        return x.to(self.device, non_blocking=True)

    def close(self) -> None:
        pass


def batch_gather(dataset, device: torch.device, workers: int = 1):
    """The batch-level reader for `dataset`, or None when it exposes no `pixels` and
    `targets` (then `FeedDL` loads item by item, as fastai does)."""
    pixels, targets = getattr(dataset, "pixels", None), getattr(dataset, "targets", None)
    if pixels is None or targets is None:
        return None
    if getattr(pixels, "array", None) is not None:
        return ArrayGather(pixels.array, device)
    if hasattr(pixels, "jpeg_bytes"):
        return JpegGather(pixels, device, workers)
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
        return (self.bs is not None and len(self.after_item.fs) == 0 and len(self.before_batch.fs) == 0
                and batch_gather(self.dataset, torch.device("cpu")) is not None)

    def create_batches(self, samps):
        if not self.batch_level:
            yield from super().create_batches(samps)
            return
        gather = batch_gather(self.dataset, self.device or torch.device("cpu"), self.workers)
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
