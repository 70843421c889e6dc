"""Small fastai callbacks, one job each: plain tensors, history CSV, L1 penalty, JSON events."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.learner import AvgSmoothLoss
from fastai.torch_core import maybe_gather
from fastcore.basics import noop

from .rundir import append_text

__all__ = [
    "PlainTensors",
    "HistoryCSV",
    "L1Penalty",
    "JsonEvents",
    "ChannelsLastAuto",
    "AugmentWhenLong",
    "tensorboard_callback",
    "LoaderTiming",
    "DeviceSmoothLoss",
    "PlainProgress",
    "wants_plain_progress",
]


class PlainTensors(Callback):
    """Hand the model plain `torch.Tensor`s.

    fastai's tensor subclasses (TensorImage, TensorCategory) route every op of the forward
    pass through `__torch_function__`; the batch transforms need them, the model does not.
    """

    order = 1  # after the batch is on its device, before anything runs the model

    def before_batch(self):
        self.learn.xb = tuple(_bare_tensor(x) for x in self.xb)
        self.learn.yb = tuple(_bare_tensor(y) for y in self.yb)


def _bare_tensor(t):
    return (
        t.as_subclass(torch.Tensor)
        if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor
        else t
    )


class HistoryCSV(Callback):
    """One row per epoch in `history.csv`: epoch, train_loss, valid_loss, metrics, seconds.

    Epochs are counted across `fine_tune`'s two phases and across resumed runs (`start`).
    """

    order = 60  # after fastai's Recorder (50) has filled `final_record`

    def __init__(self, path: str | Path, start: int = 0):
        self.path, self.count, self.trained = Path(path), start, False

    def before_epoch(self):
        self._t0, self.trained = time.perf_counter(), False

    # get_preds/validate also fire epoch events; only epochs that trained are history.
    def after_train(self):
        self.trained = not hasattr(self.learn, "lr_finder")  # lr_find's "epochs" are not history

    def after_epoch(self):
        if not self.trained:
            return
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        values = [float(v) if v is not None else "" for v in self.learn.final_record]
        row = dict(epoch=self.count, **dict(zip(names, values)),
                   seconds=round(time.perf_counter() - self._t0, 3))
        new = not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\r\n")
        if new:
            writer.writeheader()
        writer.writerow(row)
        append_text(self.path, buf.getvalue())
        self.count += 1


class L1Penalty(Callback):
    """Adds `l1 * sum(|w|)` over the trainable weights to the training loss (L2 is `wd`)."""

    order = 5

    def __init__(self, l1: float):
        self.l1 = l1

    def after_loss(self):
        if not self.training or not self.l1:
            return
        penalty = sum(p.abs().sum() for n, p in self.model.named_parameters()
                      if p.requires_grad and p.ndim > 1)  # weights, not biases or norms
        self.learn.loss_grad = self.learn.loss_grad + self.l1 * penalty


class JsonEvents(Callback):
    """JSON-lines events for scripts: one object per trained epoch, plus fit start and end.

    Epochs count across `fine_tune`'s phases like `history.csv`. lr_find, get_preds and
    validate also fire fit events (fastai's Learner is their context manager): no events.
    """

    order = 61

    def __init__(self, path: str | Path):
        self.path, self.count, self.started, self.trained = Path(path), 0, False, False

    def _emit(self, **event):
        append_text(self.path, json.dumps(dict(time=time.time(), **event)) + "\n")

    def before_fit(self):
        self.started = False

    def before_epoch(self):
        self.trained = False

    def after_train(self):
        self.trained = not hasattr(self.learn, "lr_finder")

    def after_epoch(self):
        if not self.trained:
            return
        if not self.started:  # only now is it known that this "fit" trains
            self.started = True
            self._emit(event="fit_start", epochs=self.n_epoch)
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        self._emit(
            event="epoch",
            epoch=self.count,
            **{
                n: (float(v) if v is not None else None)
                for n, v in zip(names, self.learn.final_record)
            },
        )
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


class ChannelsLastAuto(Callback):
    """Channels-last weights where they pay: always on CUDA; on CPU for depthwise-conv models.

    Measured on 2 CPU cores (training step, 64 px, bs 64): mobilenetv3_small_100 83 ms in
    channels_last vs 154 ms contiguous; resnet18 about 5 % slower, so CPU keeps it off for
    models without depthwise convolutions. `enabled` True/False forces it.

    Batches are handed over in the model's format: a uint8 NHWC batch viewed as NCHW is
    channels-last already, and a contiguous model fed channels-last input runs its
    convolutions channels-last (measured: a 3-epoch resnet18 run 12 % slower on CPU).
    """

    order = -1  # before anything wraps the model (DDP, compile)

    def __init__(self, enabled: bool | None = None):
        self.enabled, self.format = enabled, torch.contiguous_format

    def before_fit(self):
        on = self.enabled
        if on is None:
            on = self.dls.device.type == "cuda" or _has_depthwise_conv(self.model)
        self.format = torch.channels_last if on else torch.contiguous_format
        if on:
            self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self):
        x = self.xb[0] if self.xb else None
        if (isinstance(x, torch.Tensor) and x.dim() == 4
                and not x.is_contiguous(memory_format=self.format)):
            self.learn.xb = (x.contiguous(memory_format=self.format), *self.xb[1:])


class AugmentWhenLong(Callback):
    """Training augmentation on only while the fit is planned for `from_epochs` or more.

    For runs whose length is planned while they train (`budget.TimeBudget` sets
    `n_epoch`): a short run from scratch learns faster without augmentation, a long one
    needs it (`plan.default_augment`). Checked at every batch, so a re-plan takes effect at
    once; the decision of the last batch is `self.used`. After the fit the transform is
    left on, as built (`learn.tta()` uses the validation loader's own, always on).
    """

    order = 60

    def __init__(self, from_epochs: int):
        self.from_epochs, self.used = from_epochs, None

    def _augments(self) -> list:
        from .data.loaders import BatchAugment
        dl = self.dls.train
        while hasattr(dl, "dl"):  # the training shards wrap the fastai loader
            dl = dl.dl
        return [t for t in dl.after_batch.fs if isinstance(t, BatchAugment)]

    def before_batch(self):
        if self.training:
            self.used = self.n_epoch >= self.from_epochs
            for t in self._augments():
                t.enabled = self.used

    def after_fit(self):
        for t in self._augments():
            t.enabled = True


def _has_depthwise_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
               for m in model.modules())


class LoaderTiming(Callback):
    """Per training step, the time the loop waited for its batch vs the step itself.

    The wait runs from the end of one batch's callbacks to the next batch's
    `before_batch` (the loader's `next`, the copy to the device and `after_batch`); the
    step from there to this callback's `after_batch`. The first `skip` batches of each
    epoch (thread start, warm-up) are left out. With `sync` (default: on CUDA) each step
    ends with `torch.cuda.synchronize()`, so the step is the GPU's time, not the launch
    time: for benchmarks, not for training runs.

    Example:
        >>> timing = LoaderTiming()
        >>> learn.fit(1, cbs=timing); timing.summary()["wait_fraction"]
    """

    order = 99  # last: the step includes every other callback's work

    def __init__(self, skip: int = 1, sync: bool | None = None, clock=time.perf_counter):
        self.skip, self.sync, self.clock = skip, sync, clock
        self.waits, self.steps, self.images = [], [], 0

    def before_train(self):
        self._end = self.clock()

    def before_batch(self):
        if self.training:
            self._start = self.clock()

    def after_batch(self):
        if not self.training:
            return
        sync = self.sync
        if sync is None:  # a DataLoaders made without a device has None
            sync = getattr(getattr(self.learn.dls, "device", None), "type", None) == "cuda"
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        end = self.clock()
        if self.iter >= self.skip:
            self.waits.append(self._start - self._end)
            self.steps.append(end - self._start)
            self.images += len(self.yb[0]) if self.yb else 0
        self._end = end

    def summary(self) -> dict:
        """Mean wait and step seconds, wait / step, and images/s over the timed steps."""
        if not self.steps:
            return dict(steps=0, wait_seconds=None, step_seconds=None, wait_fraction=None,
                        images_per_s=None)
        wait, step = sum(self.waits) / len(self.waits), sum(self.steps) / len(self.steps)
        return dict(steps=len(self.steps), wait_seconds=wait, step_seconds=step,
                    wait_fraction=wait / step if step else None,
                    images_per_s=self.images / (sum(self.waits) + sum(self.steps)))


class _SmoothLossOnDevice(AvgSmoothLoss):
    """fastai's `AvgSmoothLoss` (same formula, same gather across ranks) kept on the device."""

    def accumulate(self, learn):
        self.count += 1
        loss = maybe_gather(learn.loss.mean().detach())
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class DeviceSmoothLoss(Callback):
    """No host sync per training step for the smoothed loss (on CUDA).

    fastai's `Recorder` smooths the training loss after every batch with `AvgSmoothLoss`,
    whose `to_detach` copies the loss to the CPU: the host then waits for the GPU to finish
    the step before it can queue the next one (and the loader's copy). This callback gives
    the Recorder the same smoothing computed on the device; the epoch's `train_loss` is
    read once, at the epoch's end, and `recorder.losses` is moved to the CPU then, so
    `plot_loss`, `history.csv` and the logs see what fastai would have recorded. fastai's
    progress bar still reads the loss each batch: runs without a bar (--quiet, logs to a
    file) do not. lr_find keeps fastai's version (it compares the loss every batch).
    """

    order = 49  # before the Recorder (50) resets and uses it

    def __init__(self, always: bool = False):
        self.always = always  # also off CUDA (tests)

    def before_fit(self):
        rec = getattr(self.learn, "recorder", None)
        device = getattr(self.dls, "device", None)
        self.swapped = (
            rec is not None
            and (self.always or getattr(device, "type", None) == "cuda")
            and type(rec.smooth_loss) is AvgSmoothLoss
            and not hasattr(self.learn, "lr_finder")
        )
        if self.swapped:
            self.original, rec.smooth_loss = (
                rec.smooth_loss,
                _SmoothLossOnDevice(rec.smooth_loss.beta),
            )

    def after_epoch(self):
        rec = getattr(self.learn, "recorder", None)
        if not getattr(self, "swapped", False):
            return
        new = [
            i
            for i, v in enumerate(rec.losses)
            if isinstance(v, torch.Tensor) and v.device.type != "cpu"
        ]
        if new:  # one copy for the whole epoch
            for i, v in zip(new, torch.stack([rec.losses[i] for i in new]).cpu().unbind()):
                rec.losses[i] = v

    def after_fit(self):
        if getattr(self, "swapped", False):
            self.learn.recorder.smooth_loss = self.original
            self.swapped = False


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
