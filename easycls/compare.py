"""Runs side by side: `easycls compare RUN_DIR...`.

Reads only what `fit` leaves in each run directory (`metrics.json`, `history.csv`,
`config.json`, `model.json`), so runs made on several machines can be copied together
and compared. A folder that holds no finished run is left out with one line saying why.
Writes `compare.md` and `compare.csv` (one row per run) and `compare.png` (validation
curves per epoch, and the final metric against wall time).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .rundir import write_csv, write_file

__all__ = ["compare_runs", "read_run", "run_dirs", "Run", "Comparison", "NotARun", "NoRuns"]

# Table columns in order; the main metric columns come from the runs (see `Run.row`).
SETTINGS = ["run", "data", "arch", "size", "bs", "pretrained", "epochs", "processes", "device",
            "lr", "time_budget_s", "train_s", "total_s", "images_per_s"]
TAIL = ["valid_loss", "best_epoch", "rank"]
_TEXT = ("run", "data", "arch", "device")  # left-aligned in compare.md
_DIGITS = {"lr": ".3g", "time_budget_s": ".0f", "train_s": ".1f", "total_s": ".1f",
           "images_per_s": ".1f"}


class NotARun(ValueError):
    """A folder that holds no finished run; the message says which and why."""


class NoRuns(ValueError):
    """None of the folders given holds a finished run."""


@dataclass
class Run:
    """One run directory as `fit` wrote it."""

    path: Path
    metrics: dict
    config: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def main_metric(self) -> str:
        """`accuracy`, or the F1 average the multi-label thresholds were tuned for."""
        if "accuracy" in self.metrics:
            return "accuracy"
        tuned = self.metrics.get("thresholds") or {}
        average = tuned.get("average", "samples") if isinstance(tuned, dict) else "samples"
        return f"f1_{average}"

    @property
    def data(self) -> str:
        return Path(str(self.config.get("source") or "?")).name

    @property
    def dataset(self) -> tuple:
        """What makes two runs' scores comparable: the classes and the validation images."""
        classes = tuple(self.model.get("classes") or ()) or self.data
        return classes, self.metrics.get("n_valid")

    def curve(self, key: str) -> list[float | None]:
        """One history.csv column per epoch (None where a row lacks it)."""
        return [_number(r.get(key)) for r in self.history]

    def best_epoch(self) -> int | None:
        """The epoch (from 1) with the best per-epoch validation metric."""
        key = "accuracy" if self.main_metric == "accuracy" else "f1_samples"
        values = [v if v is not None else float("-inf") for v in self.curve(key)]
        if not values or max(values) == float("-inf"):
            return None
        return values.index(max(values)) + 1

    def row(self) -> dict:
        """The run's table row: settings, timings and scores as the run recorded them."""
        m, c = self.metrics, self.config
        main = self.main_metric
        scores = {k: m.get(k) for k in (main, "top5_accuracy") if k in m}
        return dict(run=self.path.name, data=self.data,
                    arch=c.get("arch") or self.model.get("arch"),
                    size=c.get("size") or self.model.get("input_size"), bs=c.get("bs"),
                    pretrained=c.get("pretrained"), epochs=len(self.history) or None,
                    processes=m.get("processes"), device=m.get("device"), lr=c.get("lr"),
                    time_budget_s=m.get("time_budget_seconds") or c.get("time_budget"),
                    train_s=m.get("train_seconds"), total_s=m.get("total_seconds"),
                    images_per_s=m.get("images_per_s"), **scores,
                    valid_loss=m.get("valid_loss"), best_epoch=self.best_epoch())


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _json(path: Path, required: bool = False) -> dict:
    if not path.is_file():
        if required:
            raise NotARun(f"{path.parent}: no {path.name}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NotARun(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise NotARun(f"{path}: not a JSON object")
    return data


def _why_not_a_run(path: Path) -> str:
    if not path.is_dir():
        return f"{path}: no such folder"
    if (path / "checkpoint.pth").is_file():
        return (f"{path}: an unfinished run (checkpoint.pth but no metrics.json): continue it "
                f"with `easycls fit --resume {path}`")
    if (path / "config.json").is_file():
        return (f"{path}: an unfinished run (config.json but no metrics.json: still training, "
                "or stopped before the end)")
    return f"{path}: not a run directory (no metrics.json)"


def read_run(path: str | Path) -> Run:
    """The finished run in `path`.

    Raises:
        NotARun: no such folder, an unfinished run (no metrics.json), or a damaged file.
    """
    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise NotARun(_why_not_a_run(path))
    metrics = _json(path / "metrics.json", required=True)
    history = []
    if (path / "history.csv").is_file():
        with (path / "history.csv").open(newline="", encoding="utf-8") as f:
            history = list(csv.DictReader(f))
    return Run(path, metrics, _json(path / "config.json"), _json(path / "model.json"), history)


def _holds_run(path: Path) -> bool:
    return any((path / f).is_file() for f in ("metrics.json", "config.json", "checkpoint.pth"))


def run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """`paths` with each folder of runs (a folder that is no run but holds some, such as
    `bench/runs`) replaced by the runs in it."""
    out: list[Path] = []
    for p in map(Path, paths):
        inner = sorted(c for c in p.iterdir() if c.is_dir() and _holds_run(c)) if (
            p.is_dir() and not _holds_run(p)) else []
        out += inner or [p]
    return out


@dataclass
class Comparison:
    """The table of `compare_runs`: every column of every run, and how it is shown."""

    runs: list[Run]
    rows: list[dict]      # one per run, every column (None where a run lacks it)
    columns: list[str]    # the columns that differ between runs: the table shown
    common: dict          # columns with one value in every run, folded into one line
    skipped: list[str]    # one line per folder left out
    ranked_by: str | None  # the metric of the rank column; None when the runs are not ranked
    note: str             # what the ranking is, or why there is none

    def header(self) -> list[str]:
        n = len(self.rows)
        lines = [f"{n} run{'s' if n > 1 else ''} compared. {self.note}"]
        if self.common:
            lines.append("same in every run: " + ", ".join(
                f"{k} {_cell(k, v)}" for k, v in self.common.items()))
        return lines + [f"left out: {s}" for s in self.skipped]

    def text(self) -> str:
        """The header lines and a fixed-width table, for the terminal."""
        from .report import format_table
        cells = [{c: _cell(c, r.get(c)) for c in self.columns} for r in self.rows]
        return "\n".join(self.header() + ["", format_table(cells, self.columns)])

    def markdown(self) -> str:
        """The same as a Markdown page (`compare.md`)."""
        lines = ["# Runs compared", ""] + [f"{h}  " for h in self.header()] + [""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" if c in _TEXT else "--:"
                                    for c in self.columns) + "|")
        lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in self.columns) + " |"
                  for r in self.rows]
        return "\n".join(lines) + "\n"


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, _DIGITS.get(column, ".4f"))
    return str(value)


def _columns(rows: list[dict]) -> list[str]:
    scores = [k for r in rows for k in r if k not in SETTINGS and k not in TAIL]
    return SETTINGS + list(dict.fromkeys(scores)) + TAIL


def _fold(rows: list[dict], columns: list[str]) -> tuple[list[str], dict]:
    """(the columns that differ, {column: value} of those equal in every run); columns
    empty in every run are dropped."""
    shown, common = [], {}
    for c in columns:
        values = [r.get(c) for r in rows]
        if all(v is None for v in values):
            continue
        if c != "run" and len(rows) > 1 and all(v == values[0] for v in values):
            common[c] = values[0]
        else:
            shown.append(c)
    return shown, common


def _rank(runs: list[Run], rows: list[dict]) -> tuple[str | None, str]:
    """Add the rank column (1 = best main metric) when the runs can be ranked."""
    datasets = {}
    for run in runs:
        datasets.setdefault(run.dataset, run)
    if len(datasets) > 1:
        named = "; ".join(f"{r.data} ({len(r.model.get('classes') or [])} classes, "
                          f"{r.metrics.get('n_valid', '?')} validation images)"
                          for r in datasets.values())
        return None, f"Not ranked: the runs are on {len(datasets)} different datasets: {named}."
    metrics = {run.main_metric for run in runs}
    if len(metrics) > 1:
        return None, f"Not ranked: the runs report different metrics ({', '.join(metrics)})."
    metric = metrics.pop()
    scores = [row.get(metric) if row.get(metric) is not None else float("-inf") for row in rows]
    for row, score in zip(rows, scores):  # ties share a rank: 1, 1, 3
        row["rank"] = 1 + sum(other > score for other in scores)
    return metric, f"Ranked by {metric} (1 = best)."


def compare_runs(paths: Iterable[str | Path], out: str | Path | None = None,
                 say: Callable[[str], None] | None = None) -> Comparison:
    """Tabulate and plot finished runs side by side.

    Args:
        paths: run directories, or folders of run directories (their runs are taken).
        out: folder for compare.md, compare.csv and compare.png (None: write nothing).
        say: where the table goes (e.g. `print`); lines about folders left out come first.

    Raises:
        NoRuns: none of `paths` holds a finished run.

    Example:
        >>> table = compare_runs(["runs/a", "runs/b", "runs/c"], out="compare", say=print)
        >>> table.ranked_by, table.common   # e.g. "accuracy", {"arch": "resnet18", ...}
    """
    runs, skipped = [], []
    for p in run_dirs(paths):
        try:
            runs.append(read_run(p))
        except NotARun as e:
            skipped.append(str(e))
    if not runs:
        raise NoRuns("nothing to compare: " + (" | ".join(skipped) or "no folders given"))
    rows = [run.row() for run in runs]
    _unique_labels(runs, rows)
    ranked_by, note = _rank(runs, rows)
    columns, common = _fold(rows, _columns(rows))
    table = Comparison(runs, rows, columns, common, skipped, ranked_by, note)
    if say:
        say(table.text())
    if out is not None:
        _write(table, Path(out))
    return table


def _unique_labels(runs: list[Run], rows: list[dict]) -> None:
    """Folder names label the runs; where two share a name, the parent folder is added."""
    names = [r.path.name for r in runs]
    for run, row in zip(runs, rows):
        if names.count(run.path.name) > 1:
            row["run"] = f"{run.path.parent.name}/{run.path.name}"


def _write(table: Comparison, out: Path) -> None:
    from .report import plot_comparison
    write_file(out / "compare.md", table.markdown())
    full = [c for c in _columns(table.rows) if any(r.get(c) is not None for r in table.rows)]
    write_csv(out / "compare.csv", table.rows, full)
    metric = table.ranked_by or table.runs[0].main_metric
    per_epoch = "accuracy" if metric == "accuracy" else "f1_samples"
    series = {row["run"]: dict(metric=run.curve(per_epoch), loss=run.curve("valid_loss"),
                               seconds=row.get("total_s"), final=row.get(run.main_metric))
              for row, run in zip(table.rows, table.runs)}
    plot_comparison(series, out / "compare.png", metric=metric, per_epoch=per_epoch)
