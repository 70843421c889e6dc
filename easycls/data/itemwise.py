"""easycls's own data through fastai's per-item pipeline, for `fit(..., item_tfms=[...])`.

easycls's loaders gather whole batches of pixels decoded once (the pixel store), so a
per-item transform has no item to run on. With `item_tfms`, the item table (folder, zip,
CSV or recipe, split and checked as always) becomes a fastai `DataBlock` instead: each
image is opened and transformed one by one, every epoch, as in plain fastai. That costs
the store's speed; the run is otherwise the one `fit(block, source)` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fastai.data.core import DataLoaders

from ..config import TrainConfig
from ..plan import default_bs
from .given import GivenData
from .images import check_images, open_image
from .items import ItemTable
from .loaders import default_workers
from .prepare import multi_label_of, random_split

__all__ = ["itemwise_data", "item_dataloaders", "drop_unreadable", "OpenRef", "LabelsOf",
           "ITEMWISE_NOTE"]

ITEMWISE_NOTE = ("item_tfms: images go through fastai's per-item pipeline (opened and "
                 "transformed one by one, every epoch) instead of easycls's pixel store")


class OpenRef:
    """`get_x`: an image reference (a path, or a zip member) opened as easycls opens it
    (upright RGB, 16-bit and transparency handled); an image given as an object (PIL,
    array, as `learn.predict` may get) passes through to fastai's `PILImage.create`."""

    def __call__(self, o: Any) -> Any:
        return open_image(str(o)) if isinstance(o, (str, Path)) else o


class LabelsOf:
    """`get_y`: an item's labels from the item table (one class, or a list when
    multi-label)."""

    def __init__(self, table: ItemTable, multi_label: bool):
        self.labels = {str(r): labs for r, labs in zip(table.refs, table.labels)}
        self.multi_label = multi_label

    def __call__(self, ref: Any) -> Any:
        labels = self.labels[str(ref)]
        return list(labels) if self.multi_label else labels[0]


def drop_unreadable(table: ItemTable, progress: bool = False) -> ItemTable:
    """The table without its unreadable images (into `table.skipped`), checked again: a
    broken file is found before training, not mid-epoch."""
    bad = check_images(table.refs, progress=progress)
    return table.drop(bad).check() if bad else table


def _sized(item_tfms: list, size: int) -> list:
    """The user's item transforms, with fastai's `Resize(size)` (a centre crop on
    validation, what the saved bundle does) unless one of them sets the size itself."""
    from fastai.vision.augment import Resize
    if any(getattr(t, "size", None) is not None for t in item_tfms):
        return list(item_tfms)
    return list(item_tfms) + [Resize(size)]


def item_dataloaders(table: ItemTable, multi_label: bool, item_tfms: list, *, size: int,
                     bs: int, batch_tfms: list = (), augment: bool = False, workers: int = 0,
                     device: torch.device | None = None) -> DataLoaders:
    """fastai DataLoaders over `table`'s split (`is_valid`), built by a `DataBlock` with the
    user's `item_tfms` and `batch_tfms` (and easycls's batch augmentation with `augment`).

    Example:
        >>> dls = item_dataloaders(table, False, [RandomResizedCrop(64)], size=64, bs=32)
    """
    from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.data import ImageBlock

    from .augment import BatchAugment
    target = MultiCategoryBlock(vocab=table.classes) if multi_label else CategoryBlock(
        vocab=table.classes)
    valid = [i for i, v in enumerate(table.is_valid) if v]
    extra = [BatchAugment(size)] if augment else []
    block = DataBlock(blocks=(ImageBlock, target), get_x=OpenRef(),
                      get_y=LabelsOf(table, multi_label), splitter=IndexSplitter(valid),
                      item_tfms=_sized(item_tfms, size), batch_tfms=extra + list(batch_tfms))
    return block.dataloaders(list(table.refs), bs=bs, num_workers=workers, device=device)


def itemwise_data(table: ItemTable, cfg: TrainConfig, item_tfms: list, batch_tfms: list = (),
                  *, groups: list | None = None, world_size: int = 1,
                  device: torch.device | None = None, progress: bool = False) -> GivenData:
    """`table` split (as `PreparedData` splits it), its unreadable images dropped, as the
    user's own data (`GivenData`) over `item_dataloaders`."""
    if table.is_valid is None:
        table.is_valid = random_split(len(table.refs), cfg.valid_pct, cfg.seed, groups)
    table = drop_unreadable(table.check(), progress)
    n_train = len(table.refs) - sum(table.is_valid)
    workers = cfg.workers if cfg.workers is not None else default_workers(cached=False)
    dls = item_dataloaders(table, multi_label_of(table, cfg), item_tfms, size=cfg.size,
                           bs=cfg.bs or default_bs(n_train, world_size), batch_tfms=batch_tfms,
                           augment=cfg.augment is True, workers=workers, device=device)
    return GivenData(dls, name=table.name, table=table)
