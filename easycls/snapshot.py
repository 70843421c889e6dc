"""`easycls.save(learn, dir)`: the bundle of a Learner as it is now.

Everything is read from the Learner itself, not from a record taken when `fit` ended: its
model, its classes (`dls.vocab`), the input size and normalization of its validation
loader, and the thresholds its loss decodes with (`set_thresholds`). A Learner trained
further, moved to a new size, re-thresholded, or built by `easycls.learners` on the user's
own fastai DataLoaders saves what its `learn.predict` does.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from fastai.data.transforms import Normalize
from fastai.learner import Learner

from .bundle import bare_model, save_bundle
from .bundle_schema import BundleError
from .learners import current_thresholds
from .models import custom_arch_name

__all__ = ["save", "learner_meta"]


def save(learn: Learner, out: str | Path) -> Path:
    """Save `learn` as it is now as a safe bundle (model.safetensors + model.json) in `out`.

    Works for the Learner `fit` returns and for any Learner made by `easycls.learners`'
    factories, on any fastai DataLoaders with a `vocab`. `easycls.load(out)` then predicts
    as `learn.predict` does.

    Example:
        >>> learn.fit_one_cycle(1); set_thresholds(learn, {"global": 0.4})
        >>> save(learn, "runs/better")
    """
    return save_bundle(learn.model, out, **learner_meta(learn))


def learner_meta(learn: Learner) -> dict:
    """The keyword arguments of `bundle.save_bundle` for `learn` as it is now."""
    record = learn.__dict__.get("easycls")  # `fit`'s RunRecord; not looked up on the model
    model = bare_model(learn.model)
    mean, std = _normalization(learn.dls)
    thresholds = current_thresholds(learn)
    return dict(arch=record.config.arch if record is not None else _arch(model),
                classes=_classes(learn.dls), size=_size(learn.dls), mean=mean, std=std,
                multi_label=thresholds is not None,
                thresholds=_with_tuning_facts(thresholds, record))


def _arch(model: torch.nn.Module) -> str:
    """timm's name for a timm model, else the model's import path (`custom:...`)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return name if isinstance(name, str) and timm.is_model(name) else custom_arch_name(model)


def _classes(dls) -> list[str]:
    vocab = getattr(dls, "vocab", None)
    if vocab is None:
        raise BundleError("easycls.save needs the class names: the Learner's DataLoaders have "
                          "no vocab (build them with a CategoryBlock or MultiCategoryBlock)")
    return [str(c) for c in vocab]


def _size(dls) -> int:
    """The side of the square images the validation loader feeds the model."""
    dl = dls.valid if len(dls.valid.dataset) else dls.train
    height, width = dl.one_batch()[0].shape[-2:]
    if height != width:
        raise BundleError(f"easycls.save needs square inputs; the Learner's validation batches "
                          f"are {height}x{width} (resize to one size, e.g. Resize({height}))")
    return int(height)


def _normalization(dls) -> tuple[list[float], list[float]]:
    """fastai's `Normalize` in the validation batch pipeline, else none (mean 0, std 1)."""
    for tfm in dls.valid.after_batch.fs:
        if isinstance(tfm, Normalize) and tfm.mean is not None:
            return ([float(m) for m in torch.as_tensor(tfm.mean).flatten()],
                    [float(s) for s in torch.as_tensor(tfm.std).flatten()])
    return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def _with_tuning_facts(live: dict | None, record) -> dict | None:
    """The live thresholds, with how `fit` tuned them (chosen, average, f1) while they are
    still the ones it tuned."""
    tuned = (record.metrics.get("thresholds") or {}) if record is not None else {}
    if live is None or not tuned:
        return live
    unchanged = all(tuned.get(k) == v for k, v in live.items() if k != "global")
    return {**tuned, **live} if unchanged else live
