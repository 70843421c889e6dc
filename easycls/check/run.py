"""`check(source)`: find duplicates, leakage, odd images, imbalance and (optionally) likely
label errors in the data `fit` would train on, and write the report folder."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from ..config import TrainConfig
from ..data.prepare import load_items
from .findings import (
    MAX_DISTANCE,
    MIN_CORRELATION,
    duplicate_groups,
    group_findings,
    image_findings,
    imbalance,
    items_of,
)
from .hashing import scan
from .report import verdicts, write_report

__all__ = ["check", "default_out"]


def default_out(name: str) -> Path:
    """`checks/<data name>-<time>`."""
    return Path("checks") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check(source: str, *, images: str | None = None, out: str | Path | None = None,
          max_distance: int = MAX_DISTANCE, min_correlation: float = MIN_CORRELATION,
          workers: int | None = None, progress: bool = False, say=print) -> dict:
    """Check a dataset before (or after) training and write its report folder.

    Args:
        source: what `fit` takes: a folder, split folders, a .zip, a CSV or a recipe name.
        images: the image folder of a CSV source.
        out: report folder (default `checks/<data name>-<time>`).
        max_distance: perceptual-hash bits two near-duplicates may differ by.
        min_correlation: thumbnail correlation that confirms a near-duplicate.
        workers: decoding threads (default: one per core).
        progress: print an image counter while decoding.
        say: where the one-line summary goes.

    Returns:
        the content of `check.json`; `result["out"]` is the report folder.

    Example:
        >>> r = check("photos/")
        >>> r["duplicates"][:1], r["leakage"][:1]
    """
    t0 = time.perf_counter()
    table = load_items(TrainConfig(source=str(source), images=images))
    items = items_of(table)
    found = scan(items.refs, workers, progress)
    group_ids, pairs = duplicate_groups(found, max_distance, min_correlation)
    result = dict(source=str(source), n_images=len(items.refs), n_classes=len(items.classes),
                  has_split=items.has_split, max_distance=max_distance,
                  min_correlation=min_correlation, near_pairs=len(pairs))
    result.update(group_findings(items, group_ids))
    result.update(image_findings(items, found), imbalance=imbalance(items), label_issues=None)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["verdicts"] = verdicts(result)
    out = Path(out) if out else default_out(table.name)
    write_report(out, result)
    result["out"] = str(out)
    say(f"{source}: {result['n_images']} images; {_summary(result)}; report: {out}/check.md")
    return result


def _summary(result: dict) -> str:
    bad = [v["line"] for v in result["verdicts"] if v["status"] != "ok"]
    return "; ".join(bad) if bad else "no problems found"
