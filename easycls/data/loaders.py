"""fastai DataLoaders over an item table: decoded pixels in, augmented normalized batches out.

Pixels come from a storage format (`storage.py`: the uint8 cache, the compact JPEG store)
or are decoded per item; either way
each item is a uint8 CHW tensor already at its stored size, so all per-image float work
(augmentation, normalization) runs once per batch, on the GPU when there is one.

The datasets are fastai `Datasets`, so fastai's everyday API works on `learn.dls`
(`vocab`, `c`, `test_dl`, `show_batch`, `predict`, `tta`, `export`):

- items are indices `0..n-1` into one split's pixel store;
- the input pipeline is one `LoadImage` transform: an index reads row `i` of the store; a
  path, a PIL image or an array gets exactly the validation preprocessing of
  `easycls.load` (`images.to_pixels` at the validation size), so
  `dls.test_dl(["a.jpg", PILImage.create(...)])` and `learn.predict("a.jpg")` work;
- the target pipeline is `IndexedCategorize` (single-label; fastai's `Categorize`, decoding
  to a `Category`) or `IndexedMultiCategorize` (multi-hot rows; fastai's
  `EncodedMultiCategorize`, decoding to a `MultiCategory`), which hold the `vocab`;
- batch transforms: `IntToFloatTensor`, `BatchAugment` (training split only, and under
  `tta`) and fastai's `Normalize` (whose decode `show_batch`/`show_results` use).

Readers of whole batches (a batch gather that bypasses per-item transforms) use the raw
arrays: `ds.pixels` (a `Pixels`: `.array`, an (N, S, S, 3) uint8 memmap, or `.refs` decoded
on access) and `ds.targets` (int64 class indices, or float32 multi-hot rows); item `i` of a
dataset is always `pixels[i]`, `targets[i]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fastai.vision.learner  # noqa: F401  (show_batch, show_results, plot_top_losses of images)
import numpy as np
import torch
from fastai.data.core import DataLoaders, Datasets, TfmdLists
from fastai.data.transforms import (
    Categorize,
    DisplayedTransform,
    EncodedMultiCategorize,
    IntToFloatTensor,
    Normalize,
)
from fastai.torch_core import TensorCategory, TensorImage, TensorMultiCategory
from fasttransform import Pipeline
from PIL import Image

from ..job import worker_budget
from .augment import BatchAugment
from .feed import FeedDL
from .images import load_resized, to_pixels

__all__ = ["ImageDataset", "Pixels", "Rows", "LoadImage", "IndexedCategorize",
           "IndexedMultiCategorize",
           "train_store_size", "make_dataloaders", "encode_labels", "pixel_stats",
           "default_workers"]


def train_store_size(size: int, augment: bool) -> int:
    """Training images are stored a little larger so random crops keep detail."""
    return int(round(size * 1.14)) if augment else size


@dataclass
class Pixels:
    """Uint8 pixels of a list of images: a decoded (N,S,S,3) array, or refs decoded on access."""

    refs: list[str]
    size: int
    array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[i] if self.array is not None else load_resized(self.refs[i], self.size)


_INDEX = (int, np.integer)


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


class LoadImage(DisplayedTransform):
    """An item -> uint8 CHW `TensorImage`: an index reads the pixel store; a path, PIL image,
    HWC array or CHW uint8 tensor is resized as `easycls.load` does (center square, `size`)."""

    # What `test_set`'s type inference accepts as an input of this pipeline.
    input_types = (*_INDEX, str, Path, Image.Image, np.ndarray, torch.Tensor)

    def __init__(self, pixels: Pixels | None, size: int):
        super().__init__()
        # `store`, not `pixels`: only an `ImageDataset` (item i = row i) offers `pixels` to
        # batch readers; fastai's test sets reuse this transform over other indices.
        self.store, self.size = pixels, size

    def encodes(self, o) -> TensorImage:
        return TensorImage(torch.from_numpy(np.array(self._hwc(o))).permute(2, 0, 1))

    def _hwc(self, o) -> np.ndarray:
        if isinstance(o, _INDEX):
            if self.store is None:
                raise IndexError("this DataLoaders holds no pixels (an exported Learner): "
                                 "give image paths, PIL images or arrays instead of indices")
            return self.store[int(o)]
        if isinstance(o, torch.Tensor):  # CHW, as fastai tensors are
            o = o.detach().cpu().permute(1, 2, 0).numpy() if o.ndim == 3 else o.cpu().numpy()
        if isinstance(o, np.ndarray):  # any HWC array, resized like a picture
            o = Image.fromarray(_uint8(o))
        if isinstance(o, (str, Path, Image.Image)):
            return to_pixels(o, self.size)  # as bundle.Predictor does
        raise TypeError(f"cannot read an image from {type(o).__name__}: give a path, a PIL "
                        "image or an HWC uint8 array")

    def emptied(self) -> LoadImage:
        return LoadImage(None, self.size)


def _uint8(a: np.ndarray) -> np.ndarray:
    """An image array as uint8: floats in [0, 1] scaled to 0-255, integers in 0-255 as they
    are; anything else is refused rather than wrapped around or cut (a black image)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise ValueError(f"a float image array must hold values in [0, 1] (this one: "
                             f"{np.nanmin(a):g} to {np.nanmax(a):g}); for 0-255 values pass "
                             "uint8 (array.astype(np.uint8))")
        return np.rint(a * 255.0).astype(np.uint8)
    if a.dtype.kind in "iub" and (not a.size or (a.min() >= 0 and a.max() <= 255)):
        return a.astype(np.uint8)
    raise ValueError(f"cannot read an image from a {a.dtype} array: give uint8 values "
                     "(0-255) or floats in [0, 1]")


def _labels(o, labels_of, vocab, multi_label: bool) -> list[str]:
    """The labels of an image given by path (`dls.test_dl(files, with_labels=True)`): the
    run's own record of it (`labels_of`), else, single-label, its folder's name when that
    is a class (fastai's `parent_label`)."""
    found = labels_of(o) if labels_of is not None else None
    if found is None and not multi_label and Path(o).parent.name in vocab:
        found = [Path(o).parent.name]
    if found is None:
        raise ValueError(f"cannot tell the label of {o}: it is not one of the run's images"
                         + ("" if multi_label else " and its folder is not a class name")
                         + "; leave out with_labels=True, or label it with a folder per class")
    return found


class IndexedCategorize(Categorize):
    """fastai's `Categorize` over item indices: `targets[i]` is a class index into `vocab`;
    an image path gets its label from `labels_of` or its folder (`_labels`)."""

    input_types = (*_INDEX, str, Path)

    def __init__(self, targets: np.ndarray | None, vocab, labels_of=None):
        super().__init__(vocab=list(vocab), sort=False)
        self.store, self.c, self.labels_of = targets, len(self.vocab), labels_of

    def encodes(self, o) -> TensorCategory:
        if isinstance(o, _INDEX):
            return TensorCategory(int(self.store[int(o)]))
        return TensorCategory(self.vocab.o2i[_labels(o, self.labels_of, self.vocab, False)[0]])

    def emptied(self) -> IndexedCategorize:
        return IndexedCategorize(None, self.vocab)


class IndexedMultiCategorize(EncodedMultiCategorize):
    """fastai's `EncodedMultiCategorize` over item indices: `targets[i]` is a multi-hot row."""

    input_types = (*_INDEX, str, Path)

    def __init__(self, targets: np.ndarray | None, vocab, labels_of=None):
        super().__init__(vocab=list(vocab))
        self.store, self.labels_of = targets, labels_of

    def encodes(self, o) -> TensorMultiCategory:
        if not isinstance(o, _INDEX):
            return TensorMultiCategory(torch.as_tensor(encode_labels(
                [_labels(o, self.labels_of, self.vocab, True)], list(self.vocab), True)[0]))
        return TensorMultiCategory(torch.as_tensor(np.asarray(self.store[int(o)]),
                                                   dtype=torch.float32))

    def emptied(self) -> IndexedMultiCategorize:
        return IndexedMultiCategorize(None, self.vocab)


class ImageDataset(Datasets):
    """One split: fastai `Datasets` of (uint8 TensorImage, target) over a pixel store.

    Example:
        >>> ds = ImageDataset(Pixels(refs, 32, array), targets, False, 1, vocab=["cat", "dog"])
        >>> ds[0][1], ds.vocab, ds.pixels.array.shape
    """

    def __init__(self, pixels: Pixels | None = None, targets: np.ndarray | None = None,
                 multi_label: bool = False, split_idx: int | None = None, vocab=None, *,
                 tls=None, n_inp: int | None = None, labels_of=None, **kwargs):
        if tls is None:  # built from pixels; fastai's own copies (subset, new) pass `tls`
            tls = _tls(pixels, targets, multi_label, split_idx, vocab, labels_of)
        super().__init__(tls=tls, n_inp=n_inp or 1, **kwargs)

    @property
    def pixels(self) -> Pixels | None:
        return self.tls[0].tfms.fs[0].store

    @property
    def targets(self) -> np.ndarray | None:
        return self.tls[1].tfms.fs[0].store

    @property
    def multi_label(self) -> bool:
        return isinstance(self.tls[1].tfms.fs[0], IndexedMultiCategorize)

    def new_empty(self) -> ImageDataset:
        """The same transforms without pixels or targets (what `learn.export()` pickles)."""
        tls = [TfmdLists([], Pipeline([f.emptied() for f in tl.tfms.fs], split_idx=tl.split_idx),
                         split_idx=tl.split_idx, types=tl.types, do_setup=False) for tl in self.tls]
        return ImageDataset(tls=tls, n_inp=self.n_inp)


def _tls(pixels: Pixels, targets: np.ndarray, multi_label: bool, split_idx: int | None,
         vocab, labels_of=None) -> list[TfmdLists]:
    n = len(pixels)
    if vocab is None:  # no class names given: the indices stand for themselves
        vocab = [str(i) for i in range(targets.shape[1] if multi_label else int(targets.max()) + 1)]
    y_tfm = (IndexedMultiCategorize if multi_label else IndexedCategorize)(targets, vocab,
                                                                          labels_of)
    # Plain int items: fastai's `L(dl.items)` (ClassificationInterpretation) wraps arrays whole.
    return [TfmdLists(range(n), [LoadImage(pixels, pixels.size)], split_idx=split_idx),
            TfmdLists(range(n), [y_tfm], split_idx=split_idx)]


def encode_labels(labels: list[list[str]], vocab: list[str], multi_label: bool) -> np.ndarray:
    """Class indices (single-label) or multi-hot float rows (multi-label)."""
    index = {c: i for i, c in enumerate(vocab)}
    if not multi_label:
        return np.array([index[labs[0]] for labs in labels], dtype=np.int64)
    hot = np.zeros((len(labels), len(vocab)), dtype=np.float32)
    for row, labs in enumerate(labels):
        hot[row, [index[lab] for lab in labs]] = 1.0
    return hot


def pixel_stats(pixels: Pixels, n: int = 512, seed: int = 0,
                first: bool = False) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of a sample of images, for training from scratch
    (``first``: the first ``n`` images, for pixels already in a random order)."""
    rng = np.random.default_rng(seed)
    idx = (np.arange(min(n, len(pixels))) if first else
           rng.choice(len(pixels), size=min(n, len(pixels)), replace=False))
    sample = np.stack([pixels[int(i)] for i in idx]).reshape(-1, 3).astype(np.float64) / 255.0
    std = np.maximum(sample.std(0), 1e-3)  # a constant channel must not divide by zero
    return sample.mean(0).tolist(), std.tolist()


def default_workers(cached: bool) -> int:
    """Decoding threads per process: none for the uint8 cache (one gather per batch),
    else this process's share of the machine's cores (`job.worker_budget`)."""
    return 0 if cached else worker_budget()


def _batch_tfms(size: int, mean, std, augment: bool, flip: bool, on_cuda: bool,
                extra: list = ()) -> list:
    # BatchAugment only runs where the split is 0: training, and `learn.tta()` on any split.
    # `extra` (the user's batch_tfms) take their places by their fastai `order`.
    tfms: list = [IntToFloatTensor()]
    if augment:
        tfms.append(BatchAugment(size, flip=flip))
    return tfms + list(extra) + [Normalize.from_stats(mean, std, cuda=on_cuda)]


def make_dataloaders(train: ImageDataset, valid: ImageDataset, *, size: int, bs: int, mean, std,
                     augment: bool = True, flip: bool = True, workers: int = 0,
                     device: torch.device | None = None, seed: int = 42,
                     batch_tfms: list = ()) -> DataLoaders:
    """Training (shuffled, last partial batch dropped) and validation DataLoaders;
    `batch_tfms` (fastai batch transforms, e.g. `aug_transforms()`) join both pipelines.

    Both are `FeedDL`s: whole batches gathered from the pixel store in a background
    thread (`workers` decoding threads when the pixels are not the uint8 cache), pinned
    and copied ahead on CUDA; the float work is `after_batch`, on the device.
    """
    device = device or torch.device("cpu")
    on_cuda = device.type == "cuda"
    common = dict(workers=workers, device=device)
    train_dl = FeedDL(train, bs=bs, shuffle=True, drop_last=len(train) > bs,
                      after_batch=_batch_tfms(size, mean, std, augment, flip, on_cuda, batch_tfms),
                      **common)
    valid_dl = FeedDL(valid, bs=bs * 2, shuffle=False, drop_last=False,
                      after_batch=_batch_tfms(size, mean, std, True, flip, on_cuda, batch_tfms),
                      **common)
    train_dl.rng.seed(seed)  # the data order follows the run's seed
    return DataLoaders(train_dl, valid_dl, device=device)
