"""What a run writes while it trains: the history CSV, JSON events, plain progress lines
for logs and TensorBoard. fastai callbacks, rank 0 only (`Session.main_only`)."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

from fastai.callback.core import Callback
from fastcore.basics import noop

from .rundir import append_text

__all__ = ["epoch_record", "TrainedEpochs", "HistoryCSV", "JsonEvents", "PlainProgress",
           "tensorboard_callback", "wants_plain_progress"]


def epoch_record(learn) -> dict:
    """The epoch's losses and metrics by name, as fastai's Recorder logged them.

    When a time budget stops an epoch's training early (`CancelTrainException`), the
    Recorder leaves the train loss out of its record; the smoothed loss of the batches that
    did train stands in for it, so every value keeps its own column.
    """
    names = [n for n in learn.recorder.metric_names[1:] if n != "time"]
    values = list(learn.final_record)
    if getattr(learn.recorder, "cancel_train", False) and len(values) == len(names) - 1:
        loss = getattr(learn, "smooth_loss", None)
        values.insert(0, None if loss is None else float(loss))
    return {n: (float(v) if v is not None else None) for n, v in zip(names, values)}


class TrainedEpochs(Callback):
    """Base of the callbacks that report trained epochs only: in `after_epoch`,
    `self.trained` says whether the epoch trained. get_preds and validate also fire epoch
    events (fastai's Learner is their context manager), and lr_find's "epochs" are not the
    run's."""

    trained = False

    def before_epoch(self):
        self.trained = False

    def after_train(self):
        self.trained = not hasattr(self.learn, "lr_finder")


class HistoryCSV(TrainedEpochs):
    """One row per epoch in `history.csv`: epoch, train_loss, valid_loss, metrics, seconds.

    Epochs are counted across `fine_tune`'s two phases and across resumed runs (`start`).
    """

    order = 60  # after fastai's Recorder (50) has filled `final_record`

    def __init__(self, path: str | Path, start: int = 0):
        self.path, self.count = Path(path), start

    def before_epoch(self):
        super().before_epoch()
        self._t0 = time.perf_counter()

    def after_epoch(self):
        if not self.trained:
            return
        values = {k: "" if v is None else v for k, v in epoch_record(self.learn).items()}
        row = dict(epoch=self.count, **values,
                   seconds=round(time.perf_counter() - self._t0, 3))
        new = not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\r\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
        append_text(self.path, buf.getvalue())
        self.count += 1


class JsonEvents(TrainedEpochs):
    """JSON-lines events for scripts: one object per trained epoch, plus fit start and end.

    Epochs count across `fine_tune`'s phases like `history.csv`. lr_find, get_preds and
    validate also fire fit events (fastai's Learner is their context manager): no events.
    """

    order = 61

    def __init__(self, path: str | Path):
        self.path, self.count, self.started = Path(path), 0, False

    def _emit(self, **event):
        append_text(self.path, json.dumps(dict(time=time.time(), **event)) + "\n")

    def before_fit(self):
        self.started = False

    def after_epoch(self):
        if not self.trained:
            return
        if not self.started:  # only now is it known that this "fit" trains
            self.started = True
            self._emit(event="fit_start", epochs=self.n_epoch)
        self._emit(event="epoch", epoch=self.count, **epoch_record(self.learn))
        self.count += 1

    def after_fit(self):
        if self.started:
            self._emit(event="fit_end")


def tensorboard_callback(log_dir: str | Path) -> Callback:
    """fastai's TensorBoardCallback writing to `log_dir` (losses, metrics, lr per step).

    Raises a clear ImportError before training when tensorboard is not installed.
    """
    try:
        from fastai.callback.tensorboard import TensorBoardCallback
    except ImportError as e:
        raise ImportError("--tensorboard (tensorboard=True) needs the tensorboard package: "
                          "pip install tensorboard") from e
    # No graph tracing (fails under mixed precision) and no image logging (needs a DataBlock).
    return TensorBoardCallback(log_dir=str(log_dir), trace_model=False, log_preds=False)


def wants_plain_progress(stream=None) -> bool:
    """True when `stream` (default stdout) is not a terminal: CI, SLURM, nohup, a file.
    There carriage-return progress bars become kilobytes of rewritten lines."""
    stream = stream if stream is not None else sys.stdout
    return not (hasattr(stream, "isatty") and stream.isatty())


class PlainProgress(Callback):
    """Progress as plain lines, for logs: one line per epoch, and one every `every` seconds
    inside long epochs. Use it instead of fastai's `ProgressCallback` when the output is
    not a terminal (`wants_plain_progress`).

    Example:
        >>> learn.remove_cb(ProgressCallback); learn.add_cb(PlainProgress())
        epoch 1/5: train_loss 0.5123, valid_loss 0.4012, accuracy 0.9120 (00:12)
    """

    order = 60  # where fastai's ProgressCallback sits: after the Recorder (50)

    def __init__(self, every: float = 120.0, stream=None, clock=time.monotonic):
        self.every, self.stream, self.clock = every, stream, clock
        self.active = False

    def _say(self, line: str) -> None:
        print(line, file=self.stream if self.stream is not None else sys.stdout, flush=True)

    def before_fit(self):
        self.depth = getattr(self, "depth", 0) + 1
        if self.depth > 1:  # a get_preds/validate inside the fit: the outer fit decides
            return
        # get_preds/validate/lr_find run with fastai's no_logging(): nothing to show then.
        self.active = self.learn.logger is not noop and not hasattr(self.learn, "lr_finder")
        if self.active:
            self.old_logger, self.learn.logger = self.learn.logger, self._epoch_line

    def before_epoch(self):
        self.trained = False

    def before_train(self):
        self._last = self.clock()

    def after_train(self):
        self.trained = True  # get_preds/validate also end "epochs" (fastai's Learner context)

    def after_batch(self):
        if not (self.active and self.training) or self.clock() - self._last < self.every:
            return
        self._last = self.clock()
        loss = getattr(self.learn, "smooth_loss", None)
        shown = f", train_loss {float(loss):.4f}" if loss is not None else ""
        self._say(f"epoch {self.epoch + 1}/{self.n_epoch}: batch "
                  f"{self.iter + 1}/{self.n_iter}{shown}")

    def _epoch_line(self, log) -> None:
        names = self.recorder.metric_names
        if not getattr(self, "trained", False) or len(log) != len(names):
            return  # a validation-only record, or the header: each line names its numbers
        values = dict(zip(names, log))
        parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
                 if k not in ("epoch", "time") and v is not None]
        self._say(f"epoch {int(values.get('epoch', self.epoch)) + 1}/{self.n_epoch}: "
                  f"{', '.join(parts)} ({values.get('time', '')})")

    def after_fit(self):
        self.depth = max(0, getattr(self, "depth", 1) - 1)
        if self.depth == 0 and self.active:
            self.learn.logger, self.active = self.old_logger, False
