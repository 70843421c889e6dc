"""fastai DataLoaders over an item table: decoded pixels in, augmented normalized batches out.

Pixels come from the decoded-image cache (`cache.py`) or are decoded per item; either way
each item is a uint8 CHW tensor already at its stored size, so all per-image float work
(augmentation, normalization) runs once per batch, on the GPU when there is one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import IntToFloatTensor, Normalize
from fastai.torch_core import TensorCategory, TensorImage, TensorMultiCategory
from fastai.vision.augment import aug_transforms

from .images import load_resized

__all__ = ["ImageDataset", "Pixels", "train_store_size", "make_dataloaders", "encode_labels",
           "pixel_stats", "default_workers"]


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


class ImageDataset:
    """Indexable (image, target) pairs; `split_idx` tells fastai which transforms apply."""

    def __init__(self, pixels: Pixels, targets: np.ndarray, multi_label: bool, split_idx: int):
        self.pixels, self.targets, self.multi_label, self.split_idx = pixels, targets, multi_label, split_idx

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int):
        # copy: cache rows are read-only memory maps
        x = TensorImage(torch.from_numpy(np.array(self.pixels[i])).permute(2, 0, 1))
        t = torch.as_tensor(self.targets[i])
        return x, (TensorMultiCategory(t) if self.multi_label else TensorCategory(t))


def encode_labels(labels: list[list[str]], vocab: list[str], multi_label: bool) -> np.ndarray:
    """Class indices (single-label) or multi-hot float rows (multi-label)."""
    index = {c: i for i, c in enumerate(vocab)}
    if not multi_label:
        return np.array([index[labs[0]] for labs in labels], dtype=np.int64)
    hot = np.zeros((len(labels), len(vocab)), dtype=np.float32)
    for row, labs in enumerate(labels):
        hot[row, [index[lab] for lab in labs]] = 1.0
    return hot


def pixel_stats(pixels: Pixels, n: int = 512, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of a sample of images, for training from scratch."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pixels), size=min(n, len(pixels)), replace=False)
    sample = np.stack([pixels[int(i)] for i in idx]).reshape(-1, 3).astype(np.float64) / 255.0
    std = np.maximum(sample.std(0), 1e-3)  # a constant channel must not divide by zero
    return sample.mean(0).tolist(), std.tolist()


def default_workers(cached: bool) -> int:
    """Cached items are a memory copy, cheaper in-process than over worker IPC."""
    if cached:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(16, max(1, cores - 1))


def _batch_tfms(size: int, mean, std, augment: bool, flip: bool, on_cuda: bool) -> list:
    tfms: list = [IntToFloatTensor()]
    if augment:
        # fastai's batch augmentation: flip, rotate, zoom (a random crop of the stored margin)
        # and lighting. min_scale=1 lets fastai fold the resize to `size` into the one affine
        # resample it does anyway; a RandomResizedCropGPU would resample every batch twice
        # (measured: 1.6x the augmented images/s on 2 CPU cores, benchmarks/pipeline_compare.py).
        tfms += aug_transforms(size=size, min_scale=1.0, do_flip=flip, max_warp=0.0)
    return tfms + [Normalize.from_stats(mean, std, cuda=on_cuda)]


def make_dataloaders(train: ImageDataset, valid: ImageDataset, *, size: int, bs: int, mean, std,
                     augment: bool = True, flip: bool = True, workers: int = 0,
                     device: torch.device | None = None, seed: int = 42) -> DataLoaders:
    """Training (shuffled, last partial batch dropped) and validation DataLoaders."""
    device = device or torch.device("cpu")
    on_cuda = device.type == "cuda"
    common = dict(num_workers=workers, pin_memory=on_cuda, device=device,
                  persistent_workers=workers > 0)
    train_dl = TfmdDL(train, bs=bs, shuffle=True, drop_last=len(train) > bs,
                      after_batch=_batch_tfms(size, mean, std, augment, flip, on_cuda), **common)
    valid_dl = TfmdDL(valid, bs=bs * 2, shuffle=False, drop_last=False,
                      after_batch=_batch_tfms(size, mean, std, False, flip, on_cuda), **common)
    train_dl.rng.seed(seed)  # the data order follows the run's seed
    return DataLoaders(train_dl, valid_dl, device=device)
