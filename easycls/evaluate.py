"""`evaluate()`: a saved model on any labelled data -> metrics, per-class table and plots.

Everything lands in one folder (default `RUN_DIR/eval-<source>/`):

| file | content |
|---|---|
| `metrics.json` | headline metrics on the evaluated images |
| `per_class.csv` | class, precision, recall, f1, support, predicted (multi-label: + thresholds) |
| `predictions.csv` | one row per image: file, target(s), prediction(s) |
| `skipped.txt` | images left out, with the reason (unreadable, unknown label) |
| single-label | `confusion_matrix.csv` (counts), `confusion_matrix.png` (normalized) |
| single-label | `most_confused.csv`, `top_losses.png` |
| multi-label | `f1_vs_threshold.png`, `frequency_vs_f1.png` |
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import thresholds as th
from .bundle import Predictor, load
from .data.images import open_image
from .data.items import DataError
from .data.loaders import encode_labels
from .data.prepare import SPLITS, run_items
from .decide import tuned_thresholds
from .metrics import multi_label_scores
from .predict import output_name
from .report import (
    format_table,
    plot_confusion,
    plot_f1_curves,
    plot_frequency_f1,
    plot_image_grid,
)
from .rundir import write_csv, write_file, write_json, write_per_class, write_skipped
from .safeio import check_writable
from .tally import SingleLabelTally

__all__ = ["evaluate", "Evaluation", "most_confused", "SPLITS"]

_PRINT_ROWS = 40  # longer per-class tables print their weakest rows only


@dataclass
class Evaluation:
    """What `evaluate` computed; the same numbers are in the files under `out_dir`."""

    out_dir: Path
    classes: list[str]
    multi_label: bool
    refs: list[str]
    targets: np.ndarray          # class indices (single-label) or multi-hot rows
    probs: np.ndarray | None     # (n, classes) float16 probabilities: always for multi-label,
                                 # single-label only when asked (`probabilities=True`)
    preds: np.ndarray            # class indices or boolean rows, as decided by the model
    metrics: dict
    per_class: list[dict]
    confusion: np.ndarray | None = None     # single-label counts, rows = true class
    confused: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- choosing the images


def _slug(source: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(source.rstrip("/")).name or source).strip("_") or "data"


def _known(refs: list[str], labels: list[list[str]], classes: list[str], multi_label: bool):
    """Images whose labels the model knows; the rest with their reasons."""
    known, keep, skipped = set(classes), [], []
    for ref, labs in zip(refs, labels):
        unknown = sorted(set(labs) - known)
        if unknown:
            skipped.append((ref, f"label(s) {unknown} are not among the model's classes"))
        elif not multi_label and len(labs) != 1:
            skipped.append((ref, f"{len(labs)} labels for a single-label model"))
        else:
            keep.append((ref, labs))
    return [r for r, _ in keep], [labs for _, labs in keep], skipped


def _score(predictor: Predictor, refs: list[str], labels: list[list[str]], bs: int, name: str,
           keep_probs: bool):
    """(refs, targets, scores, skipped) of the usable images: known labels, readable.

    Each batch is scored as it comes (`Predictor.stream`): single-label into a running
    `SingleLabelTally`, multi-label into float16 probabilities, so memory does not hold
    N x C float32 probabilities and their temporaries.
    """
    refs, labels, skipped = _known(refs, labels, predictor.classes, predictor.multi_label)
    targets = encode_labels(labels, predictor.classes, predictor.multi_label)
    tally = None if predictor.multi_label else SingleLabelTally(len(predictor.classes),
                                                                keep_probs=keep_probs)
    kept, probs, bad = [], [], {}
    for where, p, failed in predictor.stream(refs, bs=bs):
        kept += where
        bad.update(failed)
        if tally is not None:
            tally.update(p, targets[where])
        else:
            probs.append(p.astype(np.float16))
    skipped += [(refs[i], why) for i, why in sorted(bad.items())]
    if not kept:
        raise DataError(f"no usable labelled images in {name} ({len(skipped)} skipped, e.g. "
                        f"{skipped[0][1] if skipped else 'none found'})")
    scores = tally if tally is not None else np.concatenate(probs)
    return [refs[i] for i in kept], targets[kept], scores, skipped


# ---------------------------------------------------------------- single-label


def _single_per_class(cm: np.ndarray, classes: list[str]) -> list[dict]:
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    prec = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros(len(tp)), where=support > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(len(tp)), where=(prec + rec) > 0)
    return [
        dict(
            **{"class": c},
            precision=float(p),
            recall=float(r),
            f1=float(f),
            support=int(s),
            predicted=int(n),
        )
        for c, p, r, f, s, n in zip(classes, prec, rec, f1, support, predicted)
    ]


def most_confused(cm: np.ndarray, classes: list[str], min_count: int = 1) -> list[dict]:
    """Off-diagonal cells, largest first: true class, predicted class, count, share of the true
    class."""
    rows = []
    for i, j in zip(*np.nonzero(cm)):
        if i != j and cm[i, j] >= min_count:
            rows.append(dict(true=classes[i], predicted=classes[j], count=int(cm[i, j]),
                             share=float(cm[i, j] / cm[i].sum())))
    return sorted(rows, key=lambda r: (-r["count"], -r["share"]))


def _single(ev: Evaluation, tally: SingleLabelTally, n_losses: int) -> None:
    ev.preds, ev.probs = tally.preds, tally.probs
    ev.confusion = tally.confusion
    ev.per_class = _single_per_class(ev.confusion, ev.classes)
    ev.confused = most_confused(ev.confusion, ev.classes)
    ev.metrics = tally.metrics()
    ev.metrics["f1_macro"] = float(np.mean([r["f1"] for r in ev.per_class if r["support"] > 0]))
    out = ev.out_dir
    write_file(out / "confusion_matrix.csv", _counts_csv(ev.confusion, ev.classes))
    write_csv(out / "most_confused.csv", ev.confused, ["true", "predicted", "count", "share"])
    plot_confusion(ev.confusion, ev.classes, out / "confusion_matrix.png")
    p_pred, losses = tally.p_pred, tally.losses
    write_csv(out / "predictions.csv", (
        dict(file=output_name(r), target=ev.classes[y], predicted=ev.classes[p],
             probability=round(float(pp), 6), loss=round(float(loss), 6))
        for r, y, p, pp, loss in zip(ev.refs, ev.targets, ev.preds, p_pred, losses)),
        ["file", "target", "predicted", "probability", "loss"])
    _top_losses(ev, tally, n_losses)


def _counts_csv(cm: np.ndarray, classes: list[str]) -> str:
    rows = [",".join(classes)] + [",".join(str(int(v)) for v in row) for row in cm]
    return "\n".join(rows) + "\n"


def _top_losses(ev: Evaluation, tally: SingleLabelTally, n: int) -> None:
    worst, losses, p_true = tally.worst()[:n], tally.losses, tally.p_true
    titles = [f"{ev.classes[ev.targets[k]]} -> {ev.classes[ev.preds[k]]}\nloss {losses[k]:.2f}, "
              f"p(true) {p_true[k]:.2f}" for k in worst]
    plot_image_grid([open_image(ev.refs[k]) for k in worst], titles, ev.out_dir / "top_losses.png",
                    "top losses: true -> predicted")


# ---------------------------------------------------------------- multi-label


def _multi(ev: Evaluation, predictor: Predictor) -> None:
    probs = ev.probs.astype(np.float32)  # kept as float16; the threshold maths in float32
    y = ev.targets.astype(bool)
    tuned = predictor.meta.get("thresholds") or {}
    thr, at_least_one = tuned_thresholds(tuned, len(predictor.classes))
    ev.preds = th.apply_thresholds(probs, thr, at_least_one)
    best, info = th.best_class_thresholds(probs, y)
    ev.per_class = [
        dict(
            **{"class": c},
            **{k: r[k] for k in ("precision", "recall", "f1", "support", "predicted")},
            threshold=float(t),
            best_threshold_here=float(b),
            best_f1_here=float(f),
        )
        for c, r, t, b, f in zip(
            ev.classes, th.per_class_report(ev.preds, y, thr), thr, best, info["best_f1"]
        )
    ]
    g, g_f1 = th.best_global_threshold(probs, y, tuned.get("average", "samples"))
    ev.metrics = {
        **multi_label_scores(probs, y, thr, at_least_one),
        "at_0.5": multi_label_scores(probs, y, 0.5, False),
        "best_global_threshold_here": {"threshold": g, "f1": g_f1},
        "n_valid": int(len(y)),
    }
    curves = {a: th.f1_curve(probs, y, a, n_points=400) for a in th.AVERAGES}
    marks = {"0.5": 0.5, **({"model": float(tuned["global"])} if "global" in tuned else {})}
    plot_f1_curves(curves, ev.out_dir / "f1_vs_threshold.png", marks)
    plot_frequency_f1(
        [r["support"] for r in ev.per_class],
        [r["f1"] for r in ev.per_class],
        ev.classes,
        ev.out_dir / "frequency_vs_f1.png",
    )
    names = np.asarray(ev.classes, dtype=object)
    write_csv(ev.out_dir / "predictions.csv", [
        dict(file=output_name(r), targets=" ".join(names[t]), predicted=" ".join(names[p]))
        for r, t, p in zip(ev.refs, y, ev.preds)], ["file", "targets", "predicted"])


# ---------------------------------------------------------------- files and printing


def _write(ev: Evaluation) -> None:
    write_per_class(ev.out_dir / "per_class.csv", ev.per_class)
    write_json(ev.out_dir / "metrics.json", ev.metrics)
    if ev.skipped:
        write_skipped(ev.out_dir / "skipped.txt", ev.skipped)


def summary(ev: Evaluation) -> str:
    """The printed report: headline metrics, the per-class table, the top confusions."""
    keys = ("accuracy", "top5_accuracy", "f1_macro", "f1_samples", "f1_micro", "precision_micro",
            "recall_micro", "valid_loss")
    head = "  ".join(
        f"{k}={ev.metrics[k]:.4f}" for k in keys if isinstance(ev.metrics.get(k), float)
    )
    lines = [
        f"{len(ev.refs)} images evaluated"
        + (f", {len(ev.skipped)} skipped (skipped.txt)" if ev.skipped else ""),
        head,
    ]
    cols = ["class", "precision", "recall", "f1", "support"] + (
        ["threshold"] if ev.multi_label else []
    )
    rows = ev.per_class
    if len(rows) > _PRINT_ROWS:
        rows = sorted(rows, key=lambda r: r["f1"])[:20]
        lines.append(f"the 20 weakest of {len(ev.per_class)} classes (all in per_class.csv):")
    lines.append(format_table(rows, cols))
    if ev.confused:
        lines += ["most confused (true -> predicted):"]
        lines += [f"  {r['true']} -> {r['predicted']}: {r['count']} ({r['share']:.0%} of "
                  f"{r['true']})"
                  for r in ev.confused[:10]]
    lines.append(f"report: {ev.out_dir}")
    return "\n".join(lines)


# ---------------------------------------------------------------- entry point


def evaluate(
    run_dir: str | Path,
    source: str | Path | None = None,
    out: str | Path | None = None,
    *,
    split: str = "auto",
    images: str | Path | None = None,
    bs: int = 64,
    model=None,
    device: str | None = None,
    top_losses: int = 16,
    quiet: bool = False,
    probabilities: bool = False,
) -> Evaluation:
    """Score a saved model on labelled data and write a report folder.

    Args:
        run_dir: the run directory written by `fit`.
        source: labelled data (folder, zip, CSV or dataset name); default the run's own data.
        out: report folder (default `RUN_DIR/eval-<source>`, plus `-<split>` for all/test).
        split: "auto" (the validation split when the data has one, its own random split for
            the run's own data, else every image), "valid", "all" or "test".
        images: image folder for a CSV source.
        bs: prediction batch size.
        model: an instance of the architecture, for custom (non-timm) models.
        device: where to run (default CUDA when available).
        top_losses: how many images the top-loss grid shows (single-label).
        quiet: do not print the report.
        probabilities: keep every image's probabilities in `Evaluation.probs` (float16,
            N x classes); single-label scoring otherwise keeps only running counts.

    Returns:
        An `Evaluation` with the metrics, per-class rows, predictions and the report folder.

    Example:
        >>> ev = evaluate("runs/digits-resnet18")        # its own validation split
        >>> ev.metrics["accuracy"], ev.out_dir
    """
    run_dir = Path(run_dir)
    check_writable(out or run_dir, "the evaluation report", "pass --out with a folder you can "
                   "write to")
    predictor = load(run_dir, model=model, device=device)
    name, refs, labels = run_items(run_dir, None if source is None else str(source), split,
                                None if images is None else str(images))
    refs, targets, scores, skipped = _score(predictor, refs, labels, bs, name, probabilities)
    suffix = f"-{split}" if split in ("all", "test") else ""
    out_dir = Path(out) if out else run_dir / f"eval-{_slug(name)}{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    probs = scores if predictor.multi_label else None
    ev = Evaluation(out_dir, predictor.classes, predictor.multi_label, refs, targets,
                    probs, np.zeros(0), {}, [], skipped=skipped)
    if ev.multi_label:
        _multi(ev, predictor)
    else:
        _single(ev, scores, top_losses)
    ev.metrics["source"], ev.metrics["n_skipped"] = str(name), len(skipped)
    _write(ev)
    if not quiet:
        print(summary(ev))
    return ev
