"""What `fit` asks of the check: groups to keep on one side of its split, and the exact
copies that cross the split it made."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..data.images import parallel_map, split_zip_ref, zip_member_info
from ..data.items import DataError, ItemTable
from ..data.prepare import column_groups
from .findings import duplicate_groups
from .hashing import scan

__all__ = ["split_groups", "exact_leaks", "groups_kept", "SPLIT_SHIFTED_MIN"]

# The shifted-frame pass's (detail, aligned) correlations for `--split-by duplicates`, looser
# than `check`'s report (0.6, 0.95): there a false pair misleads the reader, here it only
# makes the split coarser, while a missed pair puts frames of one scene on both sides. On
# benchmarks/check_quality.py's 200 scenes of 10 shifted frames, 26 scenes were cut in two
# or more groups at the report's values and 8 at these, with no more scenes joined
# (docs/performance.md, "easycls check").
SPLIT_SHIFTED_MIN = (0.5, 0.9)


def split_groups(table: ItemTable, split_by: str | None, progress: bool = False
                 ) -> list | None:
    """A group key per image for `--split-by`, or None when the split is not grouped.

    Raises:
        DataError: the data brings its own split, or the column does not exist.
    """
    if split_by is None:
        return None
    if table.is_valid is not None:
        raise DataError(f"--split-by {split_by}: {table.root or table.name} brings its own "
                        "train/valid split, which is used as it is; run `easycls check` on it "
                        "to see whether groups cross it")
    if split_by != "duplicates":
        return column_groups(table, split_by)
    ids, _ = duplicate_groups(scan(table.refs, progress=progress), shifted_min=SPLIT_SHIFTED_MIN)
    return ids.tolist()


def groups_kept(groups: list | None) -> int:
    """How many groups of two or more images were kept on one side."""
    if groups is None:
        return 0
    _, counts = np.unique(np.asarray(groups, dtype=str), return_counts=True)
    return int((counts > 1).sum())


def _identity(ref: str) -> tuple:
    """(size, CRC) of a zip member, or the file size: equal for every exact copy."""
    if split_zip_ref(ref) is not None:
        info = zip_member_info(ref)
        return info.file_size, info.CRC
    try:
        return (os.stat(ref).st_size,)
    except OSError:
        return (ref,)  # unreadable: the decode reports it


def _digest(ref: str) -> tuple:
    if split_zip_ref(ref) is not None:
        return _identity(ref)
    try:
        with open(ref, "rb") as f:
            return (hashlib.blake2b(f.read(), digest_size=16).digest(),)
    except OSError:
        return (ref,)


def exact_leaks(train: list[str], valid: list[str]) -> list[tuple[str, str]]:
    """(training image, validation image) pairs whose files are byte-for-byte the same.

    Cheap: only files whose size (zip members: size and CRC) matches across the split are
    read and hashed.
    """
    n, refs = len(train), train + valid
    sizes = list(parallel_map(_identity, refs))
    shared = set(sizes[:n]) & set(sizes[n:])
    suspects = [i for i, size in enumerate(sizes) if size in shared]
    digests = dict(zip(suspects, parallel_map(_digest, [refs[i] for i in suspects])))
    first: dict = {}
    for i in suspects:
        if i < n:
            first.setdefault((sizes[i], digests[i]), refs[i])
    return [(first[key], refs[i]) for i in suspects
            if i >= n and (key := (sizes[i], digests[i])) in first]
