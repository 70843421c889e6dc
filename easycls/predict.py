"""Batch prediction of image files into a CSV, skipping (and reporting) unreadable ones."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from .bundle import Predictor
from .data.images import check_images, split_zip_ref

__all__ = ["predict_files", "write_predictions"]


def _name(ref: str) -> str:
    z = split_zip_ref(ref)
    return z[1] if z else ref


def predict_files(predictor: Predictor, refs: Sequence[str], bs: int = 64,
                  threshold: float | None = None) -> tuple[list[dict], dict[int, str]]:
    """Rows {file, label(s), probability} for readable images, and {index: reason} for the rest."""
    bad = check_images(list(refs))
    good = [r for i, r in enumerate(refs) if i not in bad]
    rows = []
    for ref, (label, prob) in zip(good, predictor.predict_many(good, bs=bs, threshold=threshold)):
        if predictor.multi_label:
            rows.append(dict(file=_name(ref), labels=" ".join(label),
                             probabilities=" ".join(f"{p:.4f}" for p in prob)))
        else:
            rows.append(dict(file=_name(ref), label=label, probability=round(prob, 6)))
    return rows, bad


def write_predictions(predictor: Predictor, refs: Sequence[str], out_csv: str | Path, bs: int = 64,
                      threshold: float | None = None) -> tuple[list[dict], dict[int, str]]:
    """Predict `refs` into `out_csv`; unreadable images are listed in `<out_csv>.skipped.txt`."""
    rows, bad = predict_files(predictor, refs, bs, threshold)
    out_csv = Path(out_csv)
    fields = ["file", "labels", "probabilities"] if predictor.multi_label else ["file", "label", "probability"]
    with out_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    if bad:
        out_csv.with_suffix(".skipped.txt").write_text(
            "".join(f"{refs[i]}\t{reason}\n" for i, reason in sorted(bad.items())))
    return rows, bad
