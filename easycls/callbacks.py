"""Small fastai callbacks of the training step, one job each: plain tensors, the L1 penalty,
the memory format, loader timing, the smoothed loss on the device, the images trained on,
bf16 autocast on a CPU (live augmentation is `data/augment.py`'s `AugmentWhenLong`).
What a run writes as it trains is `runlog.py`."""

from __future__ import annotations

import time
import warnings

import torch
from fastai.callback.core import Callback
from fastai.learner import AvgSmoothLoss
from fastai.torch_core import maybe_gather

__all__ = [
    "PlainTensors",
    "L1Penalty",
    "ChannelsLastAuto",
    "LoaderTiming",
    "DeviceSmoothLoss",
    "ImageCount",
    "CpuBf16",
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


class ChannelsLastAuto(Callback):
    """Channels-last weights where they pay: always on CUDA; on CPU for depthwise-conv models.

    On CPU, channels-last pays for depthwise-conv models and costs the others a little
    (docs/performance.md), so CPU keeps it off for models without depthwise convolutions.
    `enabled` True/False forces it.

    Batches are handed over in the model's format: a uint8 NHWC batch viewed as NCHW is
    channels-last already, and a contiguous model fed channels-last input runs its
    convolutions channels-last (slower on CPU: docs/performance.md).
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


class ImageCount(Callback):
    """Images this process trained on, every phase (lr_find's batches left out): over the
    training seconds, the run's images/s in `metrics.json`."""

    order = 99

    def __init__(self):
        self.images = 0

    def after_batch(self):
        if self.training and not hasattr(self.learn, "lr_finder") and self.yb:
            self.images += len(self.yb[0])


class CpuBf16(Callback):
    """bf16 autocast of the training steps on a CPU (fastai's `MixedPrecision` is CUDA's).

    Only the forward pass and the loss of training batches run in bf16; backward follows
    autocast's casts, and the weights, the optimizer and every validation or prediction
    pass stay float32, so a run's validation scores are what `easycls.load` predicts.
    No loss scaling: bf16 has float32's range.

    oneDNN's bf16 kernels now and then give non-finite gradients where feature maps are
    tiny (a 16 px input leaves resnet's last stage 1x1). A bf16 step whose gradients are
    not finite is taken again in float32, before the optimizer sees it, and the rest of the
    run trains in float32 (batch norm's running statistics are put back first, so the step
    is what a float32 step would have been): `fell_back` holds the (epoch, batch) where,
    and a warning says so. Under DDP the gradients were averaged before the check, so every
    rank decides alike.
    """

    order = 10  # fastai's MixedPrecision's place

    def __init__(self):
        self._ctx = None
        self.fell_back: tuple[int, int] | None = None

    def before_batch(self):
        # Left first: an error that escaped a step (fastai has no `finally` there) must not
        # leave autocast on for what runs next, a validation pass included.
        self._leave()
        self._bf16_step = self.training and self.fell_back is None
        if self._bf16_step:
            # batch norm's running statistics move in the forward pass: kept, so a step taken
            # again in float32 starts from where a float32 step would
            self._buffers = [b.detach().clone() for b in self.learn.model.buffers()]
            self._ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self._ctx.__enter__()

    def after_pred(self):
        if self._ctx is not None:
            self.learn.pred = self.pred.float()

    def after_loss(self):
        self._leave()

    def before_step(self):
        if not self._bf16_step or _finite_grads(self.learn.model):
            return
        self.fell_back = (self.epoch, self.iter)
        warnings.warn(f"bf16 gave non-finite gradients at epoch {self.epoch}, batch "
                      f"{self.iter}: that step was taken again in float32, and the rest of "
                      "the run trains in float32 (--mixed-precision no skips bf16)",
                      stacklevel=2)
        self._again_in_float32()

    def _again_in_float32(self):
        """fastai's `Learner._do_one_batch` up to the step, with autocast off."""
        learn = self.learn
        learn.opt.zero_grad()
        with torch.no_grad():
            for b, kept in zip(learn.model.buffers(), self._buffers):
                b.copy_(kept)
        learn.pred = learn.model(*learn.xb)
        learn("after_pred")
        learn.loss_grad = learn.loss_func(learn.pred, *learn.yb)
        learn.loss = learn.loss_grad.clone()
        learn("after_loss")
        learn("before_backward")
        learn._backward()
        learn("after_backward")

    def after_cancel_batch(self):
        self._leave()

    def before_fit(self):
        self._leave()

    def after_fit(self):
        self._leave()

    def _leave(self):
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)


def _finite_grads(model: torch.nn.Module) -> bool:
    """Whether every gradient is finite: one norm over them all (a NaN or inf anywhere
    makes it non-finite)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
