"""Near-duplicate pairs among 64-bit hashes, without comparing every pair.

Multi-index hashing (Norouzi et al., 2012): split each hash into four 16-bit blocks. Two
hashes within Hamming distance k agree to within k // 4 bits on at least one block
(pigeonhole), so each hash is looked up, block by block, among the hashes whose block lies
that close to its own (a sorted array and a binary search per probe), and only those
candidates are compared in full. The work grows with N times the bucket size (N / 65536
for spread-out hashes), not with N squared.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["near_pairs", "groups_of", "hamming"]

_BLOCKS, _BITS = 4, 16
_MAX_CANDIDATES = 1 << 22  # candidate pairs compared at once: bounds the memory per step


_BYTE_BITS = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between two uint64 arrays."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    return _BYTE_BITS[x.view(np.uint8).reshape(-1, 8)].sum(1)


def _probes(radius: int) -> np.ndarray:
    """Every 16-bit mask with at most `radius` bits set."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(_BITS), r)]
    return np.array(masks, dtype=np.int64)


def _expand(qi: np.ndarray, lo: np.ndarray, hi: np.ndarray, order: np.ndarray):
    """All (query, member) pairs for query rows `qi` and their bucket ranges [lo, hi)."""
    counts = hi - lo
    q = np.repeat(qi, counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    return q, order[np.arange(len(q)) + starts]


def _block_pairs(hashes: np.ndarray, block: int, masks: np.ndarray, k: int) -> list[np.ndarray]:
    keys = ((hashes >> np.uint64(block * _BITS)) & np.uint64(0xFFFF)).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    found = []
    for mask in masks:
        probe = keys ^ mask
        lo = np.searchsorted(sorted_keys, probe, "left")
        hi = np.searchsorted(sorted_keys, probe, "right")
        counts, start = hi - lo, 0
        while start < len(keys):  # chunks of queries, each under the candidate bound
            total = np.cumsum(counts[start:])
            stop = start + max(1, int(np.searchsorted(total, _MAX_CANDIDATES, "right")))
            rows = np.arange(start, stop)
            i, j = _expand(rows, lo[rows], hi[rows], order)
            keep = i < j
            i, j = i[keep], j[keep]
            d = hamming(hashes[i], hashes[j])
            near = d <= k
            found.append(np.stack([i[near], j[near], d[near]], axis=1))
            start = stop
    return found


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Every pair of hashes within `max_distance` bits.

    Returns:
        int64 array of rows (i, j, distance) with i < j, each pair once, sorted.

    Example:
        >>> near_pairs(np.array([0b1011, 0b1001, 1 << 40], np.uint64), 2)
        array([[0, 1, 1]])
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    masks = _probes(max_distance // _BLOCKS)
    found = [np.empty((0, 3), np.int64)]
    for block in range(_BLOCKS):
        found += _block_pairs(hashes, block, masks, max_distance)
    pairs = np.concatenate(found).astype(np.int64)
    return np.unique(pairs, axis=0)


def groups_of(n: int, pairs: np.ndarray) -> np.ndarray:
    """A group id per item: connected items (through any chain of pairs) share one."""
    if len(pairs) == 0:
        return np.arange(n)
    ones = np.ones(len(pairs), dtype=np.int8)
    graph = coo_matrix((ones, (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]
