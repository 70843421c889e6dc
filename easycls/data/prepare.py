"""The one data path: source -> item table -> split -> decoded pixels -> DataLoaders.

`fit`, `evaluate`, `retune` and `bench` all come through here, so a dataset is read,
split and loaded the same way everywhere. Recipe detection happens here too: a plain
path that holds a known download is read with that recipe's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders

from ..config import TrainConfig
from ..job import ONE, Group
from ..plan import default_bs
from . import remote, storage
from .items import DataError, ItemTable
from .loaders import (
    ImageDataset,
    Pixels,
    Rows,
    default_workers,
    encode_labels,
    make_dataloaders,
    pixel_stats,
    train_store_size,
)
from .recipes import detect, get_recipe, is_recipe, read_recipe_layout
from .sources import from_path

__all__ = ["check_source", "load_items", "read_path", "random_split", "column_groups",
           "multi_label_of",
           "run_items", "SPLITS", "PreparedData", "build_dataloaders"]

SPLITS = ("auto", "valid", "all", "test")


@dataclass
class _PathSettings:
    """The settings a recipe layout reads, for plain paths (no TrainConfig there)."""

    label_delimiter: str = " "
    path: str | None = None


def read_path(source: str | Path, images: str | Path | None = None,
              label_delimiter: str = " ") -> ItemTable:
    """The item table of a folder, zip or CSV; a known download is read with its recipe."""
    p = Path(source)
    if p.exists() and (p.is_dir() or p.suffix.lower() == ".zip"):
        if (found := detect(p)) is not None:
            return read_recipe_layout(found[0], found[1], _PathSettings(label_delimiter))
    return from_path(source, images, label_delimiter)


def check_source(cfg: TrainConfig) -> None:
    """Refuse a source that is neither a dataset name nor an existing path, before any reading.

    Raises:
        DataError: naming the closest dataset names.
    """
    if not is_recipe(cfg.source) and not remote.is_remote(cfg.source) and not Path(
            cfg.source).exists():
        get_recipe(cfg.source)  # raises with the closest recipe names


def load_items(cfg: TrainConfig) -> ItemTable:
    """The item table of a recipe name or a folder / zip / CSV path."""
    if is_recipe(cfg.source):
        return get_recipe(cfg.source).load(cfg)
    check_source(cfg)
    return read_path(cfg.source, cfg.images, cfg.label_delimiter)


def random_split(n: int, valid_pct: float, seed: int, groups: list | None = None) -> list[bool]:
    """is_valid flags: a seeded random `valid_pct` share (at least one item).

    With `groups` (a group key per item), whole groups go to one side: groups are drawn in
    a seeded random order until the validation share is as close to `valid_pct` as it gets.
    """
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(n, dtype=bool)
    want = max(1, int(round(n * valid_pct)))
    if groups is None:
        is_valid[rng.permutation(n)[:want]] = True
        return is_valid.tolist()
    keys, inverse, sizes = np.unique(np.asarray(groups, dtype=str), return_inverse=True,
                                     return_counts=True)
    taken, total = np.zeros(len(keys), dtype=bool), 0
    for g in rng.permutation(len(keys)):
        if total and abs(total + sizes[g] - want) >= abs(total - want):
            continue  # this group would move the share further from the target
        taken[g], total = True, total + sizes[g]
    return taken[inverse].tolist()


def _run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    return TrainConfig.from_json(path) if path.is_file() else TrainConfig()


def _select(table: ItemTable, cfg: TrainConfig, same_source: bool,
            split: str) -> tuple[list, list]:
    """(refs, labels) of a split; `auto` is the validation split when there is one."""
    if split == "test":
        if not table.test_labels:
            raise DataError(f"{cfg.source} has no labelled test images; "
                            "use split='valid' or 'all'")
        return table.test_refs, table.test_labels
    if split == "all":
        return table.refs, table.labels
    is_valid = table.is_valid
    if is_valid is None and same_source:
        # The run's own random split, so training images are not scored as if unseen.
        is_valid = random_split(len(table.refs), cfg.valid_pct, cfg.seed,
                                _column_groups(table, cfg.split_by))
    if is_valid is None:
        if split == "valid":
            raise DataError(f"{cfg.source} has no validation split; pass split='all' "
                            "(--split all) to evaluate every image")
        return table.refs, table.labels
    keep = [i for i, v in enumerate(is_valid) if v]
    return [table.refs[i] for i in keep], [table.labels[i] for i in keep]


def _column_groups(table: ItemTable, split_by: str | None) -> list[str] | None:
    """The CSV column a run's split kept together (None without one); a split kept by
    near-duplicate groups is not rebuilt here."""
    if split_by is None:
        return None
    if split_by == "duplicates":
        raise DataError("the run kept near-duplicate groups on one side of its split "
                        "(--split-by duplicates), which is not rebuilt here: pass --split all "
                        "or held-out data")
    return column_groups(table, split_by)


def column_groups(table: ItemTable, column: str) -> list[str]:
    """The values of a CSV column, one per image, to keep together in the split."""
    if column not in table.columns:
        have = ", ".join(sorted(table.columns)) or "none (only a CSV source has columns)"
        raise DataError(f"--split-by {column}: no such column in {table.root or table.name}; "
                        f"its other columns: {have}; or use --split-by duplicates")
    return table.columns[column]


def run_items(run_dir: str | Path, source: str | None = None, split: str = "auto",
              images: str | None = None) -> tuple[str, list[str], list[list[str]]]:
    """(source, refs, labels) of a run's split: `auto` is its validation split (the same
    random split `fit` made for the run's own data), else the data's own split or all."""
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg = _run_config(run_dir)
    same = source is None or str(source) == cfg.source
    if not same:
        cfg = cfg.updated(source=str(source), images=images, path=None)
    elif images:
        cfg = cfg.updated(images=images)
    if not cfg.source:
        raise ValueError(f"{run_dir} has no config.json naming its data: "
                         "pass the data to evaluate")
    if (same and not is_recipe(cfg.source) and not remote.is_remote(cfg.source)
            and not Path(cfg.source).exists()):
        raise DataError(f"the run's data {cfg.source!r} (config.json) is not found from "
                        f"{Path.cwd()}: pass it, e.g. `easycls evaluate {run_dir} PATH/TO/DATA`")
    refs, labels = _select(load_items(cfg), cfg, same, split)
    return cfg.source, refs, labels


def _shuffle_train(table: ItemTable, seed: int) -> None:
    """Put the training items in a seeded random order among themselves (the validation
    items keep their places and order)."""
    train = [i for i, v in enumerate(table.is_valid) if not v]
    order = list(range(len(table.refs)))
    for slot, k in zip(train, np.random.default_rng(seed).permutation(len(train))):
        order[slot] = train[k]
    table.refs = [table.refs[i] for i in order]
    table.labels = [table.labels[i] for i in order]
    table.columns = {name: [v[i] for i in order] for name, v in table.columns.items()}


def _rows(px: Pixels, rows: list[int]) -> Pixels:
    """The readable rows, as a view: `array[rows]` would copy a memory-mapped cache into RAM."""
    if len(rows) == len(px):
        return px
    array = None if px.array is None else Rows(px.array, rows)
    return Pixels([px.refs[r] for r in rows], px.size, array)


def _label_lookup(table: ItemTable):
    """ref -> its labels in `table` (None when it is not there), for `test_dl(...,
    with_labels=True)`; the index is built on the first question, not for every run."""
    index: dict[str, list[str]] = {}

    def labels_of(ref) -> list[str] | None:
        if not index:
            pairs = zip(table.refs + table.test_refs,
                        table.labels + (table.test_labels or [[]] * len(table.test_refs)))
            index.update((str(r), labs) for r, labs in pairs if labs)
        found = index.get(str(ref))
        return found if found is not None else index.get(str(Path(ref).absolute()))
    return labels_of


def multi_label_of(table: ItemTable, cfg: TrainConfig) -> bool:
    """Multi-label as the labels say, unless `multi_label` is set; never drops labels.

    Raises:
        DataError: `multi_label=False` for images with several (or no) labels.
    """
    multi_label = table.multi_label if cfg.multi_label is None else cfg.multi_label
    if not multi_label and table.multi_label:  # never drop labels silently
        n = sum(len(labs) != 1 for labs in table.labels)
        raise DataError(f"multi_label=False, but {n} images of {cfg.source} have several "
                        "(or no) labels; drop --single-label to train a multi-label model")
    return multi_label


class PreparedData:
    """An item table made ready to train: split, checked, decoded; vocab and datasets."""

    def __init__(self, table: ItemTable, cfg: TrainConfig, progress: bool = False,
                 sess: Group = ONE, groups: list | None = None):
        self.progress = progress  # decode/cache progress: rank 0 only, and not when quiet
        self.sess = sess  # the processes that decide and build together
        if table.is_valid is None:  # `groups`: a key per item kept on one side of the split
            table.is_valid = random_split(len(table.refs), cfg.valid_pct, cfg.seed, groups)
        table.check()
        self.table, self.cfg = table, cfg
        self.multi_label = multi_label_of(table, cfg)
        # None: decided while training (a time budget). Stored at the size itself, so a run
        # that stays short sees exactly the validation view; one that grows long enough to
        # augment crops inside the image instead of inside a margin.
        self.store_size = train_store_size(cfg.size, cfg.augment is True)
        n_valid = sum(table.is_valid)
        splits = [(len(table.refs) - n_valid, self.store_size), (n_valid, cfg.size)]
        self.store = storage.choose(cfg.store, splits, self.sess)  # cache, jpeg or none
        if self.store == "stream":  # each chunk is read as a whole: make it a random sample
            _shuffle_train(table, cfg.seed)
        self._decode_pixels()
        self.vocab = table.classes

    @property
    def use_cache(self) -> bool:
        """True when the pixels come from the uint8 cache (read in-process, no workers)."""
        return self.store == "cache"

    def _split_refs(self, valid: bool) -> list[int]:
        return [i for i, v in enumerate(self.table.is_valid) if v == valid]

    def _pixels(self, refs: list[str], size: int) -> tuple[Pixels, dict[int, str]]:
        """Pixels of `refs` at `size` from the chosen store, and {index: reason} unreadable."""
        stored = storage.open_pixels(refs, size, self.store, self.sess, self.progress,
                                     self.cfg.source)
        return Pixels(refs, size, stored.pixels), stored.failures

    def _decode_pixels(self) -> None:
        refs, bad = self.table.refs, {}
        tr, va = self._split_refs(False), self._split_refs(True)
        self.train_px, f_tr = self._pixels([refs[i] for i in tr], self.store_size)
        self.valid_px, f_va = self._pixels([refs[i] for i in va], self.cfg.size)
        bad.update({tr[j]: r for j, r in f_tr.items()})
        bad.update({va[j]: r for j, r in f_va.items()})
        # Keep only readable items; caches keep their rows, so index through them.
        self.train_rows = [j for j in range(len(tr)) if j not in f_tr]
        self.valid_rows = [j for j in range(len(va)) if j not in f_va]
        self.table.drop(bad)
        self.table.check()

    @cached_property
    def datasets(self) -> tuple[ImageDataset, ImageDataset]:
        """(train, valid) datasets of pixels and encoded targets."""
        labels = self.table.labels
        tr_lab = [labels[i] for i in self._split_refs(False)]
        va_lab = [labels[i] for i in self._split_refs(True)]
        y_tr = encode_labels(tr_lab, self.vocab, self.multi_label)
        y_va = encode_labels(va_lab, self.vocab, self.multi_label)
        labels_of = _label_lookup(self.table)
        return (
            ImageDataset(_rows(self.train_px, self.train_rows), y_tr, self.multi_label, 0,
                         self.vocab, labels_of=labels_of),
            ImageDataset(_rows(self.valid_px, self.valid_rows), y_va, self.multi_label, 1,
                         self.vocab, labels_of=labels_of),
        )

    def pixel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of (a sample of) the training pixels (of a stream: its
        first images, already a random sample, so that few chunks are read)."""
        return pixel_stats(self.datasets[0].pixels, seed=self.cfg.seed,
                           first=self.store == "stream")


def build_dataloaders(cfg: TrainConfig, data: PreparedData | None = None, *,
                      device: torch.device | None = None,
                      normalization: tuple[list[float], list[float]] | None = None,
                      batch_tfms: list = ()) -> DataLoaders:
    """The DataLoaders `fit` trains on: cache or decode, workers, augmentation, normalization.

    Args:
        cfg: the resolved settings (size, bs, augment, workers, seed, recipe `flip`).
        data: prepared data; default: load and prepare `cfg.source`.
        device: where batches go (default CUDA when available).
        normalization: (mean, std); default: statistics of the training pixels.
        batch_tfms: the user's fastai batch transforms, added to the pipelines.

    Example:
        >>> dls = build_dataloaders(TrainConfig(source="digits", size=32, bs=16))
    """
    data = data if data is not None else PreparedData(load_items(cfg), cfg)
    train_ds, valid_ds = data.datasets
    mean, std = normalization or data.pixel_stats()
    workers = cfg.workers if cfg.workers is not None else default_workers(cached=data.use_cache)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bs = cfg.bs or default_bs(len(train_ds))  # fit resolves it first, for all processes
    return make_dataloaders(train_ds, valid_ds, size=cfg.size, bs=bs, mean=mean, std=std,
                            augment=cfg.augment is not False, flip=cfg.extra.get("flip", True),
                            workers=workers, device=device, seed=cfg.seed, batch_tfms=batch_tfms)
