"""`check(source)`: find duplicates, leakage, odd images, imbalance and (optionally) likely
label errors in the data `fit` would train on, and write the report folder."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data.items import DataError, ItemTable
from ..data.prepare import load_items
from .features import image_features
from .findings import (
    MAX_DISTANCE,
    MIN_CORRELATION,
    duplicate_groups,
    group_findings,
    image_findings,
    imbalance,
    items_of,
)
from .hashing import Scan, scan
from .labels import (
    LABEL_BUDGET,
    linear_out_of_fold,
    out_of_fold,
    rank_label_issues,
    run_probabilities,
)
from .report import verdicts, write_report

__all__ = ["check", "default_out", "LABEL_MODELS"]

LABEL_MODELS = ("linear", "cnn")


def default_out(name: str) -> Path:
    """`checks/<data name>-<time>`."""
    return Path("checks") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _run_config(source: str) -> TrainConfig | None:
    """The settings of a run directory (its config.json), or None when `source` is not one."""
    p = Path(source)
    if (p / "model.json").is_file() and (p / "config.json").is_file():
        return TrainConfig.from_json(p / "config.json")
    return None


def check(source: str, *, images: str | None = None, out: str | Path | None = None,
          labels: bool = False, run: str | Path | None = None,
          label_model: str = "linear", label_seconds: float = LABEL_BUDGET,
          max_distance: int = MAX_DISTANCE, min_correlation: float = MIN_CORRELATION,
          workers: int | None = None,
          progress: bool = False, say=print) -> dict:
    """Check a dataset before (or after) training and write its report folder.

    Args:
        source: what `fit` takes: a folder, split folders, a .zip, a CSV or a recipe name.
        images: the image folder of a CSV source.
        out: report folder (default `checks/<data name>-<time>`).
        labels: rank likely label errors from out-of-fold probabilities of short runs.
        run: rank them with this run directory's model instead (a run directory given as
            `source` does the same, on the run's own data).
        label_model: the out-of-fold model: "linear" (a logistic regression over features
            of the scan, seconds) or "cnn" (a small CNN per fold, from scratch).
        label_seconds: time ceiling of the CNN folds, all together.
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
    if (run_cfg := _run_config(str(source))) is not None:
        run, source, images = source, run_cfg.source, images or run_cfg.images
    table = load_items(TrainConfig(source=str(source), images=images))
    if label_model not in LABEL_MODELS:
        raise ValueError(f"label_model {label_model!r}: use one of {', '.join(LABEL_MODELS)}")
    if (labels or run) and table.multi_label:
        raise DataError(f"{source} is multi-label: label issues are ranked for single-label "
                        "data only; drop --labels / --run")
    items = items_of(table)
    found = scan(items.refs, workers, progress)
    group_ids, pairs = duplicate_groups(found, max_distance, min_correlation)
    result = dict(source=str(source), n_images=len(items.refs), n_classes=len(items.classes),
                  has_split=items.has_split, max_distance=max_distance,
                  min_correlation=min_correlation, near_pairs=len(pairs))
    result.update(group_findings(items, group_ids))
    result.update(image_findings(items, found), imbalance=imbalance(items), label_issues=None)
    if labels or run:
        result.update(_label_issues(table, found, run, label_model, label_seconds, say))
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["verdicts"] = verdicts(result)
    out = Path(out) if out else default_out(table.name)
    write_report(out, result)
    result["out"] = str(out)
    say(f"{source}: {result['n_images']} images; {_summary(result)}; report: {out}/check.md")
    return result


def _label_issues(table, found: Scan, run, model: str, seconds: float, say) -> dict:
    """`label_issues` over the readable labelled (training and validation) images."""
    keep = np.flatnonzero(found.readable[:len(table.refs)])
    sub = ItemTable([table.refs[i] for i in keep], [table.labels[i] for i in keep],
                    is_valid=None, name=table.name, root=table.root)
    given = [x[0] if x else "" for x in sub.labels]
    if run:
        probs, ranked = run_probabilities(str(run), sub.refs, sub.classes), None
        how = f"the model of {run}, which trained on some of them"
    elif model == "linear":
        probs, ranked = linear_out_of_fold(image_features(found, keep), given, sub.classes)
        how = "out-of-fold, linear model over image features"
    else:
        say(f"label issues: out-of-fold CNN runs, for at most {seconds:g} s")
        probs, ranked = out_of_fold(sub, seconds=seconds)
        how = "out-of-fold, small CNN"
    idx = np.arange(len(sub.refs)) if ranked is None else np.flatnonzero(ranked)
    issues = rank_label_issues(probs[idx], [given[i] for i in idx], sub.classes,
                               [sub.refs[i] for i in idx])
    return dict(label_issues=issues, label_source=how)


def _summary(result: dict) -> str:
    bad = [v["line"] for v in result["verdicts"] if v["status"] != "ok"]
    return "; ".join(bad) if bad else "no problems found"
