"""Metrics tables and plots (PNG) for a run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_history", "format_metrics"]


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
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def format_metrics(metrics: dict) -> str:
    """A short human summary line of the headline metrics."""
    keys = ("accuracy", "top5_accuracy", "f1_samples", "f1_micro", "valid_loss", "train_seconds")
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))
