"""Metrics tables and plots (PNG): training history, confusion matrix, top losses, F1 curves."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from .rundir import write_figure
from .safeio import printable_text

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_history", "format_metrics", "plot_confusion", "top_confused_classes",
           "plot_image_grid", "plot_f1_curves", "plot_frequency_f1", "format_table",
           "plot_f1_threshold", "plot_comparison"]


def plot_history(history_csv: str | Path, out_png: str | Path) -> Path | None:
    """Train and validation loss per epoch, with the main metric on a second axis."""
    rows = list(csv.DictReader(Path(history_csv).open())) if Path(history_csv).exists() else []
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if len(vals) == len(epochs):
            ax.plot(epochs, vals, style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    metric = next((k for k in ("accuracy", "f1_samples") if k in rows[0]), None)
    if metric:
        ax2 = ax.twinx()
        ax2.plot(epochs, [float(r[metric]) for r in rows], "g--^", label=metric)
        ax2.set_ylabel(metric)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("training history")
    return _save(fig, out_png)


def format_metrics(metrics: dict) -> str:
    """A short human summary line of the headline metrics."""
    keys = ("accuracy", "top5_accuracy", "f1_samples", "f1_micro", "valid_loss", "train_seconds")
    shown = [k for k in keys if isinstance(metrics.get(k), (int, float))]
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in shown)


# ---------------------------------------------------------------- evaluation plots

_FULL_LABELS = 30  # up to this many classes a confusion matrix shows every name


def _save(fig, out_png: str | Path) -> Path:
    # Names from file systems may hold undecodable bytes (lone surrogates), which matplotlib
    # cannot draw: every text of the figure shown escaped, as in the text outputs.
    for text in fig.findobj(matplotlib.text.Text):
        text.set_text(printable_text(text.get_text()))
    fig.tight_layout()
    write_figure(fig, out_png)
    plt.close(fig)
    return Path(out_png)


def _heatmap(ax, cm: np.ndarray, names: list[str] | None, title: str) -> None:
    """Row-normalized matrix (each true class sums to 1), so rare classes read like common ones."""
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if names is None:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ticks = range(len(names))
    names = [printable_text(str(n)) for n in names]  # tick labels are not Text objects yet
    fs = 9 if len(names) <= 12 else 6
    ax.set_xticks(ticks, names, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, names, fontsize=fs)
    for (i, j), v in np.ndenumerate(norm):
        if v >= 0.01:
            ax.text(j, i, _share(v), ha="center", va="center",
                    fontsize=fs - 1, color="white" if v > 0.5 else "black")


def _share(v: float) -> str:
    """0.97 -> ".97", 1.0 (or 0.996) -> "1": short enough for a cell."""
    text = f"{v:.2f}"
    return "1" if text == "1.00" else text[1:]


def top_confused_classes(cm: np.ndarray, k: int = 20) -> list[int]:
    """Indices of up to `k` classes involved in the largest off-diagonal counts."""
    off = cm.astype(np.float64).copy()
    np.fill_diagonal(off, 0)
    chosen: list[int] = []
    for flat in np.argsort(-off, axis=None):
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] == 0 or len(chosen) >= k:
            break
        chosen += [c for c in (int(i), int(j)) if c not in chosen]
    return sorted(chosen[:k])


def plot_confusion(cm: np.ndarray, classes: Sequence[str], out_png: str | Path,
                   top: int = 20) -> Path:
    """Normalized confusion matrix PNG, readable from 2 to hundreds of classes.

    Up to 30 classes: one labelled matrix with the values. More: the whole matrix without
    names (its pattern) next to the labelled sub-matrix of the `top` most confused classes.

    Example:
        >>> plot_confusion(cm, ["cat", "dog"], "confusion_matrix.png")
    """
    n = len(classes)
    if n <= _FULL_LABELS:
        side = min(4 + 0.3 * n, 12)
        fig, ax = plt.subplots(figsize=(side, side), dpi=100)
        _heatmap(ax, cm, list(classes), "confusion matrix (row-normalized)")
        return _save(fig, out_png)
    fig, (ax_all, ax_top) = plt.subplots(1, 2, figsize=(16, 9), dpi=80)
    _heatmap(ax_all, cm, None, f"all {n} classes (row-normalized)")
    sub = top_confused_classes(cm, top) or list(range(min(top, n)))
    _heatmap(ax_top, cm[np.ix_(sub, sub)], [classes[i] for i in sub],
             f"the {len(sub)} most confused classes")
    return _save(fig, out_png)


def plot_image_grid(images: Sequence, titles: Sequence[str], out_png: str | Path,
                    title: str = "") -> Path:
    """A grid of images (PIL or arrays) with one short title each, e.g. the top losses."""
    n = max(len(images), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), dpi=80, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, text in zip(axes.flat, images, titles):
        ax.imshow(np.asarray(img))
        ax.set_title(text, fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def plot_f1_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_png: str | Path,
                   marks: dict[str, float] | None = None) -> Path:
    """F1 against one global threshold, one line per average; vertical lines at `marks`."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, (thr, f1) in curves.items():
        ax.step(thr, f1, where="post", label=f"{name} (best {f1.max():.3f})")
    for name, x in (marks or {}).items():
        ax.axvline(x, ls="--", c="gray")
        ax.text(x, 0.02, f" {name}", rotation=90, fontsize=8, va="bottom")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold (all classes)")
    ax.set_ylabel("F1")
    ax.legend(loc="upper right")
    ax.set_title("F1 vs decision threshold")
    return _save(fig, out_png)


def plot_frequency_f1(support: Sequence[int], f1: Sequence[float], classes: Sequence[str],
                      out_png: str | Path) -> Path:
    """Per-class F1 against how often the label occurs: are rare labels the weak ones?"""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter(np.maximum(support, 1), f1, s=18)
    if len(classes) <= _FULL_LABELS:
        for x, y, name in zip(support, f1, classes):
            ax.annotate(str(name), (max(x, 1), y), fontsize=7, xytext=(3, 2),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("positives in the evaluated data (log)")
    ax.set_ylabel("F1 at the model's thresholds")
    ax.set_title("label frequency vs F1")
    return _save(fig, out_png)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain fixed-width text table of `rows` (floats to 4 decimals)."""

    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot_f1_threshold(probs, targets, tuned: dict, out_png: str | Path) -> Path:
    """The run's F1-vs-threshold curve (tuned average), with 0.5 and the chosen threshold."""
    from . import thresholds as th
    average = tuned.get("average", "samples")
    curve = th.f1_curve(probs, targets, average=average, n_points=400)
    marks = {"0.5": 0.5, f"best global {tuned['global']:.3f}": tuned["global"]}
    return plot_f1_curves({average: curve}, out_png, marks=marks)


def plot_comparison(series: dict[str, dict], out_png: str | Path, metric: str = "accuracy",
                    per_epoch: str = "accuracy") -> Path:
    """Runs side by side: the validation metric and loss per epoch on shared axes, and the
    final metric against wall time, one labelled point per run.

    `series` maps a run's label to `metric` and `loss` (lists, one value per epoch),
    `seconds` (its wall time) and `final` (its final `metric`).
    """
    fig, (ax_m, ax_l, ax_t) = plt.subplots(1, 3, figsize=(15, 4.2), dpi=80)
    for i, (label, s) in enumerate(series.items()):
        style = dict(color=f"C{i % 10}", marker="o", ms=3, label=label)
        for ax, key in ((ax_m, "metric"), (ax_l, "loss")):
            points = [(e, v) for e, v in enumerate(s[key], 1) if v is not None]
            if points:
                ax.plot(*zip(*points), **style)
        if s.get("seconds") is not None and s.get("final") is not None:
            ax_t.scatter(s["seconds"], s["final"], color=f"C{i % 10}")
            ax_t.annotate(label, (s["seconds"], s["final"]), fontsize=8, xytext=(4, 3),
                          textcoords="offset points")
    for ax in (ax_m, ax_l):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_m.set(xlabel="epoch", ylabel=f"validation {per_epoch}", title=f"{per_epoch} per epoch")
    ax_l.set(xlabel="epoch", ylabel="validation loss", title="validation loss per epoch")
    ax_t.set(xlabel="wall time (s)", ylabel=f"final {metric}", title=f"final {metric} vs time")
    ax_t.margins(0.2)
    if len(series) <= 12:
        ax_m.legend(fontsize=8)
    return _save(fig, out_png)
