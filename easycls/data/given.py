"""Data the user brings as fastai objects: `fit(dls)` with their own `DataLoaders`, or
`fit(block, source)` with a `DataBlock`.

`GivenData` reads from the loaders what `fit` needs to know of any data: the vocab,
single- or multi-label (from the target transform's loss, as fastai's Learner infers it),
the image size and the normalization of the validation batches. What the saved bundle
does to an image (shorter side to the size, centre square, normalize) is checked against
the user's validation transforms; where they do something else (squish, pad, their own
transform), `bundle_notes` says so in one line each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastai.data.core import DataLoaders

from .items import DataError, ItemTable

__all__ = ["GivenData", "given_dataloaders"]


def given_dataloaders(source: Any, items: Any = None, bs: int | None = None,
                      device: torch.device | None = None) -> DataLoaders | None:
    """The user's DataLoaders: `source` itself, or a DataBlock's loaders over `items`;
    None when `source` is neither (a path or a dataset name)."""
    if isinstance(source, DataLoaders):
        return source if device is None else source.to(device)
    from fastai.data.block import DataBlock
    if isinstance(source, DataBlock):
        if items is None:
            raise DataError("fit(block, source): give the DataBlock's source too, e.g. "
                            "fit(block, path)")
        kw = {} if bs is None else {"bs": bs}
        return source.dataloaders(items, device=device, **kw)
    return None


def _refs(ds) -> list[str]:
    items = getattr(ds, "items", None)
    return [str(o) for o in items] if items is not None else [str(i) for i in range(len(ds))]


def _stats(dls: DataLoaders) -> tuple[list[float], list[float]] | None:
    from fastai.data.transforms import Normalize
    for t in dls.valid.after_batch.fs:
        if isinstance(t, Normalize) and t.mean is not None:
            return (t.mean.flatten().cpu().tolist(), t.std.flatten().cpu().tolist())
    return None


class GivenData:
    """A user's DataLoaders as `fit`'s data (the interface of `prepare.PreparedData`)."""

    store = "none"  # the user's loaders decode their own images

    def __init__(self, dls: DataLoaders, name: str = "dataloaders",
                 table: ItemTable | None = None):
        self.dls = dls
        n_train, n_valid = len(dls.train_ds), len(dls.valid_ds)
        # easycls's own item table when it built the loaders (`itemwise`): its test images,
        # skipped images and labels stay part of the run.
        self.table = table if table is not None else ItemTable(
            refs=_refs(dls.train_ds) + _refs(dls.valid_ds), labels=[[]] * (n_train + n_valid),
            is_valid=[False] * n_train + [True] * n_valid, name=name)
        loss = getattr(dls.train_ds, "loss_func", None)
        self.multi_label = type(loss).__name__.startswith("BCE")
        vocab = getattr(dls, "vocab", None)
        if vocab is None:
            raise DataError("fit(dls): the DataLoaders have no vocab (a CategoryBlock or "
                            "MultiCategoryBlock target); easycls trains classifiers")
        self.vocab = [str(c) for c in vocab]
        x = dls.valid.one_batch()[0]
        if x.shape[-1] != x.shape[-2]:
            raise DataError(f"fit(dls): validation images are {tuple(x.shape[-2:])}; easycls "
                            "models take square images (Resize(size) in item_tfms)")
        self.size = int(x.shape[-1])
        self.normalization = _stats(dls)

    @property
    def datasets(self) -> tuple:
        return (self.dls.train_ds, self.dls.valid_ds)

    def targets(self) -> np.ndarray | None:
        """Multi-hot training targets (multi-label priors), when the dataset holds them."""
        tls = getattr(self.dls.train_ds, "tls", None)
        if tls is None or len(tls) < 2:
            return None
        return np.stack([np.asarray(tls[1][i], dtype=np.float32)
                         for i in range(len(self.dls.train_ds))])

    def pixel_stats(self) -> tuple[list[float], list[float]]:
        """The normalization the batches already have; none (0, 1) when they have none."""
        return self.normalization or ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])

    def loaders(self, norm: tuple[list[float], list[float]]) -> DataLoaders:
        """The user's loaders; with fastai's `Normalize` added (`norm`, the model's statistics)
        when they have none, as fastai's `vision_learner` adds it."""
        if self.normalization is None and list(norm[1]) != [1.0, 1.0, 1.0]:
            from fastai.data.transforms import Normalize
            self.dls.add_tfms([Normalize.from_stats(*norm)], "after_batch")
            self.normalization = (list(norm[0]), list(norm[1]))
        return self.dls

    def bundle_notes(self) -> list[str]:
        """One line per validation transform the saved bundle cannot reproduce."""
        from fastai.data.transforms import IntToFloatTensor, Normalize
        from fastai.vision.augment import AffineCoordTfm, Resize, ResizeMethod
        from fastai.vision.core import ToTensor
        notes = []
        for t in self.dls.valid.after_item.fs:
            if isinstance(t, ToTensor) or getattr(t, "split_idx", None) == 0:
                continue  # training-only transforms never touch validation images
            if isinstance(t, Resize) and t.method == ResizeMethod.Crop:
                continue
            notes.append(type(t).__name__)
        for t in self.dls.valid.after_batch.fs:
            if isinstance(t, (IntToFloatTensor, Normalize)):
                continue
            if isinstance(t, AffineCoordTfm) and getattr(t, "size", None) is None:
                continue  # the identity outside training
            if getattr(t, "split_idx", None) == 0:
                continue
            notes.append(type(t).__name__)
        return [f"note: the saved bundle resizes the shorter side to {self.size} px, takes the "
                f"centre square and normalizes; your validation transform {n} does something "
                "else, so easycls.load(...).predict may differ from learn.predict"
                for n in notes]
