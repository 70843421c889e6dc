"""Batch prediction of image files into a CSV, and competition submission files.

Unreadable images are skipped in predictions and reported; in a submission they keep their
row (with an empty label) because competitions reject files with missing ids. Each file is
read and decoded once, on a thread pool that runs ahead of the model (`Predictor.stream`),
and rows are made batch by batch, so memory does not grow with the probabilities of all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bundle import Predictor
from .data.images import split_zip_ref
from .data.tables import TableError, read_id_csv
from .rundir import write_label_rows
from .safeio import check_writable, one_field, printable, write_text

__all__ = ["decisions", "predict_files", "write_predictions", "write_submission",
           "submission_columns", "output_name", "SUBMISSION_FORMATS", "prediction_fields",
           "Decisions"]

# Named formats; any other "IDCOLUMN,LABELCOLUMN" header works too.
SUBMISSION_FORMATS = {
    "multilabel": ("ImageID", "Labels"),   # the COMP5329 course data: labels space-separated
    "single": ("id", "label"),             # the usual single-label Kaggle file
}


def output_name(ref: str) -> str:
    """The file name as written out: zip members without the archive, odd bytes as \\xNN."""
    z = split_zip_ref(ref)
    return printable(z[1] if z else ref)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


Decisions = tuple[dict[int, tuple], dict[int, str]]


def decisions(predictor: Predictor, refs: Sequence[str], bs: int = 64,
              threshold: float | None = None) -> Decisions:
    """({index: decision} for readable images, {index: reason} for the others), one pass.

    Hand the result to `write_predictions` and `write_submission` (`decided=`) to write
    both files from one pass over the images.
    """
    decided, bad = {}, {}
    for where, probs, failed in predictor.stream(refs, bs=bs):
        decided.update(zip(where, predictor.decide(probs, threshold)))
        bad.update(failed)
    return decided, bad


def _top_k(predictor: Predictor, refs: Sequence[str], bs: int, k: int
           ) -> tuple[list[dict], dict[int, str]]:
    """Rows {file, label_1, probability_1, ..., label_k, probability_k}, most probable first."""
    k = max(1, min(k, len(predictor.classes)))
    rows, bad = {}, {}
    for where, probs, failed in predictor.stream(refs, bs=bs):
        for i, p in zip(where, probs):
            best = np.argsort(-p, kind="stable")[:k]
            row = dict(file=output_name(refs[i]))
            for rank, c in enumerate(best, 1):
                row.update({f"label_{rank}": predictor.classes[c],
                            f"probability_{rank}": round(float(p[c]), 6)})
            rows[i] = row
        bad.update(failed)
    return [rows[i] for i in sorted(rows)], bad


def predict_files(predictor: Predictor, refs: Sequence[str], bs: int = 64,
                  threshold: float | None = None, top_k: int | None = None,
                  decided: Decisions | None = None) -> tuple[list[dict], dict[int, str]]:
    """Rows {file, label(s), probability} for readable images, and {index: reason} for the rest.

    With `top_k`, each row holds the `top_k` most probable classes and their probabilities
    (label_1, probability_1, ...) instead of the decision. `decided`: the `decisions` of
    `refs` already made (no image is read again).
    """
    if top_k:
        return _top_k(predictor, refs, bs, top_k)
    decided, bad = decided or decisions(predictor, refs, bs, threshold)
    rows = []
    for i, (label, prob) in sorted(decided.items()):
        if predictor.multi_label:
            rows.append(dict(file=output_name(refs[i]), labels=" ".join(label),
                             probabilities=" ".join(f"{p:.4f}" for p in prob)))
        else:
            rows.append(dict(file=output_name(refs[i]), label=label, probability=round(prob, 6)))
    return rows, bad


def prediction_fields(predictor: Predictor, top_k: int | None = None) -> list[str]:
    """The columns of `predict_files`' rows (the CSV header, the table's header)."""
    if top_k:
        k = max(1, min(top_k, len(predictor.classes)))
        return ["file"] + [f"{c}_{r}" for r in range(1, k + 1) for c in ("label", "probability")]
    return (
        ["file", "labels", "probabilities"]
        if predictor.multi_label
        else ["file", "label", "probability"]
    )


def write_predictions(predictor: Predictor, refs: Sequence[str], out_csv: str | Path, bs: int = 64,
                      threshold: float | None = None, top_k: int | None = None,
                      decided: Decisions | None = None) -> tuple[list[dict], dict[int, str]]:
    """Predict `refs` into `out_csv`; unreadable images are listed in `<out_csv>.skipped.txt`.
    `decided`: as in `predict_files`."""
    _check_csv_folder(out_csv)
    rows, bad = predict_files(predictor, refs, bs, threshold, top_k, decided)
    out_csv = Path(out_csv)
    fields = prediction_fields(predictor, top_k)
    write_text(out_csv, _csv_text(fields, [[r[k] for k in fields] for r in rows]))
    if bad:
        write_text(out_csv.with_suffix(".skipped.txt"),
                   "".join(f"{one_field(refs[i])}\t{reason}\n"
                           for i, reason in sorted(bad.items())))
    return rows, bad


def _check_csv_folder(out_csv: str | Path) -> None:
    """Before any image is read: the CSV's folder exists and takes a new file."""
    check_writable(Path(out_csv).parent, f"the CSV {out_csv}", "choose a folder that exists "
                   "and that you can write to (--csv)", create=False)


def submission_columns(fmt: str, multi_label: bool) -> tuple[str, str]:
    """(id column, label column) of a format: "auto", a name in SUBMISSION_FORMATS, or
    "ID,LABEL"."""
    if fmt == "auto":
        return SUBMISSION_FORMATS["multilabel" if multi_label else "single"]
    if fmt in SUBMISSION_FORMATS:
        return SUBMISSION_FORMATS[fmt]
    cols = [c.strip() for c in fmt.split(",")]
    if len(cols) != 2 or not all(cols):
        raise ValueError(f"unknown submission format {fmt!r}: use auto, "
                         f"{', '.join(SUBMISSION_FORMATS)}, "
                         "or the two column names, e.g. 'ImageID,Labels' or 'id,label'")
    return cols[0], cols[1]


def _basename(ref: str) -> str:
    return Path(output_name(ref)).name


def _match_order(
    refs: Sequence[str], order: str | Path, id_col: str
) -> tuple[list[str], list[int]]:
    """Ids of the order CSV, in its order, and the index in `refs` of each id's image."""
    try:
        ids, _ = read_id_csv(order, file_column=id_col)
    except TableError:  # no such column: fall back to the usual id column names
        ids, _ = read_id_csv(order)
    by_name, by_stem = {}, {}
    for i, ref in enumerate(refs):
        by_name.setdefault(_basename(ref), i)
        by_stem.setdefault(Path(_basename(ref)).stem, i)
    index = [by_name.get(Path(x).name, by_stem.get(Path(x).stem, -1)) for x in ids]
    missing = [x for x, i in zip(ids, index) if i < 0]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(ids)} ids in {order} have no image among the inputs "
            f"(e.g. {missing[:5]}); give the folder that holds the test images")
    return ids, index


def write_submission(
    predictor: Predictor,
    refs: Sequence[str],
    out_csv: str | Path,
    fmt: str = "auto",
    order: str | Path | None = None,
    bs: int = 64,
    threshold: float | None = None,
    ids: Sequence[str] | None = None,
    decided: Decisions | None = None,
) -> tuple[int, dict[str, str]]:
    """Write a competition submission: one row per id, labels space-separated if multi-label.

    Args:
        predictor: a loaded bundle (`easycls.load`).
        refs: image paths (see `bundle.expand_inputs`).
        out_csv: the file to write.
        fmt: "auto" (`ImageID,Labels` for multi-label, `id,label` otherwise), "multilabel",
            "single", or the two column names "ID,LABEL".
        order: a CSV (e.g. the competition's test.csv) whose id column sets the rows and their
            order; ids match image file names with or without the extension.
        bs: batch size; threshold: one multi-label threshold instead of the tuned ones.
        ids: the id of each ref, in row order (instead of `order`), when the ids are known
            already (a recipe's test.csv read from a zip).
        decided: the `decisions` of `refs` already made (no image is read again).

    Returns:
        (rows written, {id: reason} for unreadable images, whose label cell is empty).

    Example:
        >>> write_submission(load("runs/comp"), expand_inputs(["data/"]), "submission.csv",
        ...                  order="test.csv")
    """
    id_col, label_col = submission_columns(fmt, predictor.multi_label)
    _check_csv_folder(out_csv)
    if ids is not None:
        ids, index = list(ids), list(range(len(refs)))
    elif order is not None:
        ids, index = _match_order(refs, order, id_col)
    else:
        ids, index = [_basename(r) for r in refs], list(range(len(refs)))
    if decided is None:
        used = sorted(set(index))
        found, failed = decisions(predictor, [refs[i] for i in used], bs, threshold)
        decided = ({used[k]: d for k, d in found.items()},
                   {used[k]: why for k, why in failed.items()})
    return len(ids), write_label_rows(out_csv, (id_col, label_col), ids, index, decided)
