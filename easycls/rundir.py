"""The one writer of run and report directories.

Every file easycls leaves in a run directory (metrics, config, history, per-class
tables, plots, skipped lists, the bundle) is written by `write_file`, so making writes
atomic, disk-full-safe or locked is a change in one place.

| file | written by |
|---|---|
| `model.safetensors`, `model.json` | `bundle.save_bundle` |
| `metrics.json`, `config.json` | `write_json`, `TrainConfig.to_json` |
| `history.csv` | `runlog.HistoryCSV` (`append_text`) |
| `per_class.csv` | `write_per_class` (fit and evaluate, class names) |
| `skipped.txt` | `write_skipped` |
| `*.png` | `report` plots (`write_figure`) |
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .safeio import one_field, write_bytes, write_text

__all__ = ["RunRecord", "write_file", "append_text", "write_json", "write_csv", "write_per_class",
           "write_label_rows", "write_skipped", "write_figure", "PER_CLASS_COLUMNS"]

# The per-class table of fit and evaluate: class names, then the counts and scores.
PER_CLASS_COLUMNS = ["class", "precision", "recall", "f1", "support", "predicted"]


@dataclass
class RunRecord:
    """What `fit` knows about its run, as `learn.easycls`.

    Example:
        >>> learn = fit("digits")
        >>> learn.easycls.metrics["accuracy"], learn.easycls.run_dir
    """

    run_dir: Path
    config: Any                    # the resolved TrainConfig (config.json)
    vocab: list[str]               # class names in output order
    normalization: tuple[list[float], list[float]]  # (mean, std) of the inputs
    multi_label: bool
    metrics: dict                  # metrics.json
    valid_preds: tuple | None = None  # multi-label: (probabilities, targets) on validation
    confusion: Any = None              # single-label: validation confusion counts (true x pred)

    @property
    def bundle_meta(self) -> dict:
        """The keyword arguments of `bundle.save_bundle` for this run's model."""
        mean, std = self.normalization
        return dict(arch=self.config.arch, classes=self.vocab, size=self.config.size, mean=mean,
                    std=std, multi_label=self.multi_label,
                    thresholds=self.metrics.get("thresholds"))


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path`, creating its folder. Every write goes here.

    The write is atomic (`safeio`): a full disk leaves the previous file, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, data) if isinstance(data, str) else write_bytes(path, data)


def append_text(path: str | Path, text: str) -> Path:
    """`path` with `text` added at its end (history rows, event logs)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    return write_file(path, old + text)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_file(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict], columns: list[str]) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_file(path, buf.getvalue())


def write_per_class(path: str | Path, rows: list[dict]) -> Path:
    """The per-class table; each row has a class name under "class" (extra columns follow)."""
    extra = [k for k in (rows[0] if rows else {}) if k not in PER_CLASS_COLUMNS]
    return write_csv(path, rows, PER_CLASS_COLUMNS + extra)


def write_label_rows(path: str | Path, columns: tuple[str, str], ids: list[str],
                     index: list[int], decided: tuple[dict, dict]) -> dict[str, str]:
    """A submission-style CSV: row k is `ids[k]` and the labels decided for image `index[k]`
    (several space-separated; an empty cell for an unreadable image, whose id and reason go
    to `<name>.skipped.txt`). `decided` is `({image: (labels, ...)}, {image: reason})`.

    Returns:
        {id: reason} for the unreadable images.
    """
    found, bad = decided
    labels = [found[i][0] if i in found else "" for i in index]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(list(columns))
    writer.writerows([x, " ".join(lab) if isinstance(lab, list) else lab]
                     for x, lab in zip(ids, labels))
    write_text(path, buf.getvalue())
    first: dict[int, int] = {}
    for row, i in enumerate(index):
        first.setdefault(i, row)
    reasons = {ids[first[i]]: why for i, why in bad.items() if i in first}
    if reasons:
        write_text(Path(path).with_suffix(".skipped.txt"),
                   "".join(f"{x}\t{why}\n" for x, why in reasons.items()))
    return reasons


def write_skipped(path: str | Path, skipped: list[tuple[str, str]]) -> Path:
    """One `ref<TAB>reason` line per image left out (a name holding a tab or a line break is
    JSON-quoted: `safeio.one_field`)."""
    return write_file(path, "".join(f"{one_field(ref)}\t{reason}\n" for ref, reason in skipped))


def write_figure(fig, path: str | Path, **savefig_kw: Any) -> Path:
    """A matplotlib figure as PNG at `path`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    return write_file(path, buf.getvalue())
