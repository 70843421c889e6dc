"""What a check finds in a scanned item table: duplicates, leakage, odd images, imbalance.

Pure functions of the table and its `Scan`; nothing is read or written here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..data.items import ItemTable
from .hashing import Scan, colour_difference, correlation
from .index import groups_of, hamming, near_pairs
from .similar import MIN_ALIGNED, MIN_DETAIL, shifted_pairs

__all__ = ["Items", "items_of", "duplicate_groups", "group_findings", "image_findings", "imbalance",
           "MAX_DISTANCE", "MIN_CORRELATION", "MAX_COLOUR_DIFF", "TINY_SIDE", "EXTREME_RATIO"]

MAX_DISTANCE = 10      # pHash bits: candidates for a near-duplicate
MIN_CORRELATION = 0.9  # thumbnail correlation that confirms one
MAX_COLOUR_DIFF = 8.0  # mean grey levels between 4x4 colour cells: more is another picture
TINY_SIDE = 32         # px: below this the model sees mostly upscaling blur
EXTREME_RATIO = 4.0    # width:height beyond which the square centre crop loses most of it
BLANK_CONTRAST = 2.0   # grey levels of standard deviation: one flat colour


@dataclass
class Items:
    """Every image of a source once: reference, labels and the split it belongs to."""

    refs: list[str]
    labels: list[list[str]]
    splits: list[str]  # "train", "valid" or "test"
    has_split: bool = False  # the data brings its own train/valid split
    classes: list[str] = field(default_factory=list)


def items_of(table: ItemTable) -> Items:
    """The table's training, validation and test images as one list."""
    valid = table.is_valid or [False] * len(table.refs)
    test_labels = table.test_labels or [[] for _ in table.test_refs]
    return Items(table.refs + table.test_refs, table.labels + test_labels,
                 ["valid" if v else "train" for v in valid] + ["test"] * len(table.test_refs),
                 table.is_valid is not None, table.classes)


def duplicate_groups(scan: Scan, max_distance: int = MAX_DISTANCE,
                     min_correlation: float = MIN_CORRELATION, shifted: bool = True,
                     shifted_min: tuple[float, float] = (MIN_DETAIL, MIN_ALIGNED)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(group id per image, confirmed pairs (i, j, distance)) of near-duplicates.

    Candidates within `max_distance` hash bits count when their grey thumbnails correlate
    at `min_correlation` or more and their colours agree. Shifted or re-lit frames, which
    move too many hash bits, are added by `similar.shifted_pairs` at `shifted_min`
    (detail, aligned) correlations (`shifted=False` skips that pass).
    """
    ok = np.flatnonzero(scan.readable)
    pairs = near_pairs(scan.hashes[ok], max_distance)
    pairs[:, :2] = ok[pairs[:, :2]]
    same = ((correlation(scan.thumbs, pairs) >= min_correlation)
            & (colour_difference(scan.colours, pairs) <= MAX_COLOUR_DIFF))
    pairs = pairs[same]
    if shifted and scan.grey is not None:
        more = shifted_pairs(scan.grey, scan.colours, ok, *shifted_min)
        more = np.column_stack([more, hamming(scan.hashes[more[:, 0]], scan.hashes[more[:, 1]])])
        pairs = np.unique(np.concatenate([pairs, more.astype(np.int64)]), axis=0)
    return groups_of(len(scan.hashes), pairs), pairs


def _members(group_ids: np.ndarray) -> list[list[int]]:
    by = defaultdict(list)
    for i, g in enumerate(group_ids.tolist()):
        by[g].append(i)
    return sorted((m for m in by.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def group_findings(items: Items, group_ids: np.ndarray) -> dict:
    """`duplicates`, `conflicting_labels` and `leakage` from the near-duplicate groups."""
    dups, conflicts, leaks = [], [], []
    for members in _members(group_ids):
        paths = [items.refs[i] for i in members]
        dups.append(paths)
        labels = {tuple(items.labels[i]) for i in members if items.labels[i]}
        if len(labels) > 1:
            conflicts.append(dict(paths=paths, labels=[items.labels[i] for i in members]))
        if len({items.splits[i] for i in members}) > 1:
            leaks.append(dict(paths=paths, splits=[items.splits[i] for i in members]))
    return dict(duplicates=dups, conflicting_labels=conflicts, leakage=leaks)


def image_findings(items: Items, scan: Scan) -> dict:
    """Unreadable, tiny, extreme and blank images."""
    w, h = scan.sizes[:, 0], scan.sizes[:, 1]
    ok = scan.readable
    ratio = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)

    def listed(mask: np.ndarray) -> list[dict]:
        return [dict(path=items.refs[i], width=int(w[i]), height=int(h[i]))
                for i in np.flatnonzero(mask & ok)]

    return dict(
        unreadable=[dict(path=items.refs[i], reason=r) for i, r in sorted(scan.unreadable.items())],
        tiny=listed(np.minimum(w, h) < TINY_SIDE),
        extreme=listed(ratio >= EXTREME_RATIO),
        blank=[dict(path=items.refs[i]) for i in np.flatnonzero(ok & (scan.contrast
                                                                       < BLANK_CONTRAST))])


def imbalance(items: Items) -> dict:
    """Images per class (training and validation), and the largest-to-smallest ratio."""
    counts = Counter(lab for labs, s in zip(items.labels, items.splits) if s != "test"
                     for lab in labs)
    ordered = {c: counts.get(c, 0) for c in items.classes}
    lo = min(ordered.values(), default=0)
    ratio = max(ordered.values(), default=0) / lo if lo else None
    return dict(counts=ordered, ratio=round(ratio, 2) if ratio else ratio,
                smallest=min(ordered, key=ordered.get) if ordered else None)
