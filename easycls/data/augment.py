"""Batch augmentation, and the callback that decides it live.

:class:`BatchAugment` is a batch transform of the training loader (``loaders.py`` adds
it); :class:`AugmentWhenLong` is the fastai callback that turns it on or off while a run
whose length is planned as it trains (a time budget) grows or shrinks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImage

__all__ = ["BatchAugment", "AugmentWhenLong"]


class BatchAugment(DisplayedTransform):
    """Zoom (a random crop of the stored margin), flip, small rotation and lighting of a
    whole float batch, resampled once to `size`; training batches only.

    The same augmentations as fastai's `aug_transforms(min_scale=1, max_warp=0)`, cheaper:
    the sampling grid is built by broadcasting (torch's CPU `affine_grid` is slow) and
    lighting is linear instead of fastai's logit-space version (for the images/s against
    fastai's, see docs/performance.md and benchmarks/pipeline_compare.py).

    Example:
        >>> aug = BatchAugment(64)
        >>> aug(TensorImage(torch.rand(8, 3, 73, 73)), split_idx=0).shape
        torch.Size([8, 3, 64, 64])
    """

    split_idx, order = 0, 20  # after IntToFloatTensor (10), before Normalize (99)

    def __init__(
        self,
        size: int,
        flip: bool = True,
        max_rotate: float = 10.0,
        max_zoom: float = 1.1,
        max_lighting: float = 0.2,
    ):
        super().__init__()
        self.size, self.flip, self.max_rotate, self.max_zoom, self.max_lighting = (
            size, flip, max_rotate, max_zoom, max_lighting)
        # Off: the stored images (with their crop margin) are only resized to `size`, the
        # validation view. `AugmentWhenLong` switches it while training.
        self.enabled = True

    def _grid(self, n: int, device) -> torch.Tensor:
        u = lambda: torch.rand(n, 1, 1, device=device) * 2 - 1  # noqa: E731  uniform in [-1, 1]
        angle = u() * math.radians(self.max_rotate)
        scale = 1 / (1 + (u() + 1) / 2 * (self.max_zoom - 1))
        flip = torch.where(u() < 0, -1.0, 1.0) if self.flip else torch.ones(n, 1, 1, device=device)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        shift = 1 - scale  # the crop window stays inside the image
        line = torch.linspace(-1, 1, self.size, device=device)
        gx, gy = line.view(1, 1, -1), line.view(1, -1, 1)
        x = cos * flip * gx - sin * gy + u() * shift
        y = sin * flip * gx + cos * gy + u() * shift
        return torch.stack([x, y], dim=-1)

    def encodes(self, x: TensorImage) -> TensorImage:
        if x.device.type != "cpu":
            return self._augment(x)
        # These ops are too small to gain from several CPU threads, and on a busy machine
        # OpenMP's thread sync makes them slower (docs/performance.md).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._augment(x)
        finally:
            torch.set_num_threads(threads)

    def _augment(self, x: TensorImage) -> TensorImage:
        n = x.shape[0]
        plain = x.as_subclass(torch.Tensor)  # skip fastai's per-op dispatch on the big tensor
        if not self.enabled:
            if plain.shape[-1] == self.size and plain.shape[-2] == self.size:
                return x
            return TensorImage(F.interpolate(plain, size=(self.size, self.size), mode="bilinear",
                                             antialias=True, align_corners=False))
        out = F.grid_sample(
            plain,
            self._grid(n, x.device),
            mode="bilinear",
            padding_mode="reflection",
            align_corners=True,
        )
        if self.max_lighting:
            r = lambda: torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1  # noqa: E731
            contrast = torch.exp(r() * -math.log(1 - self.max_lighting))
            out = ((out - 0.5) * contrast + 0.5 + r() * self.max_lighting / 2).clamp_(0, 1)
        return TensorImage(out)


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
        self.from_epochs, self.used, self.augments = from_epochs, None, []

    def before_fit(self):
        dl = self.dls.train
        while hasattr(dl, "dl"):  # the training shards wrap the fastai loader
            dl = dl.dl
        self.augments = [t for t in dl.after_batch.fs if isinstance(t, BatchAugment)]

    def before_batch(self):
        if self.training:
            self.used = self.n_epoch >= self.from_epochs
            for t in self.augments:
                t.enabled = self.used

    def after_fit(self):
        for t in self.augments:
            t.enabled = True
