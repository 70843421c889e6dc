"""Learner factories over timm backbones: the model, loss, metrics and freezing follow from the
data.

timm owns the models (its own classifier head, `pretrained_cfg` normalization); fastai
owns training (Learner, param-group splitter, `fine_tune`).
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import fastai.callback.hook  # noqa: F401  (adds Learner.summary)
import fastai.callback.schedule  # noqa: F401  (adds fit_one_cycle, fine_tune, lr_find)
import timm
import torch
from fastai.learner import Learner
from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat
from fastai.torch_core import params
from torch import nn

from .decide import labels_on, tuned_thresholds
from .errors import UserError
from .metrics import MultiLabelScore, TopKAccuracy
from .models import ArchError, SizeError, check_size, custom_arch_name, default_size, size_kwargs
from .weights import head_module, load_start, start_weights

__all__ = ["create_model", "single_label_learner", "multi_label_learner", "model_splitter",
           "model_normalization", "check_arch", "ArchError", "PretrainedUnavailable", "SizeError",
           "arch_name", "default_size", "check_size", "MultiLabelLoss", "set_thresholds",
           "current_thresholds", "ClassifierLearner", "TunedDecodes"]

ArchSpec = str | nn.Module | Callable[[int], nn.Module]


class PretrainedUnavailable(UserError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def arch_name(arch: ArchSpec) -> str:
    if isinstance(arch, str):
        return arch
    return custom_arch_name(arch)  # "custom:<module>:<qualname>", so `easycls.load` can import it


def check_arch(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f" Closest timm names: {', '.join(close)}." if close else ""
    raise ArchError(f"unknown architecture {name!r}.{hint} List them with `easycls archs PATTERN`.")


def _cached_weights(name: str) -> str | None:
    """Path of already-downloaded weights for `name` in the Hugging Face cache, if any."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache
    for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, fname)
        if isinstance(found, str):
            return found
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    # One quick TCP connect instead of huggingface_hub's minute of retries.
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = (
        urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        or "huggingface.co"
    )
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(name: str, why: str) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"pretrained weights for {name!r} are not cached and {why}. Train from scratch with "
        "--no-pretrained (pretrained=False), or give a local weights file with --weights PATH "
        "(weights=PATH).")


def create_model(arch: ArchSpec, n_out: int, pretrained: bool = True, weights: str | None = None,
                 ps: float = 0.0, size: int | None = None,
                 classes: list[str] | None = None) -> nn.Module:
    """A classifier with `n_out` outputs, built for input `size` where timm needs to know it.

    `weights` (a run directory, bundle folder, .safetensors or .pth file) load strictly
    except for the head (`weights.load_start`); the head loads too when it fits and the
    source's classes are `classes`.

    Example:
        >>> model = create_model("vit_tiny_patch16_224", n_out=10, pretrained=False, size=64)
    """
    if weights:
        src = start_weights(weights)  # before the model: a missing file fails at once
        model = _plain_model(arch, n_out, ps, size)
        load_start(model, src, arch_name(arch), classes)
        return model
    if not isinstance(arch, str) or not pretrained:
        return _plain_model(arch, n_out, ps, size)
    kwargs = dict(num_classes=n_out, drop_rate=ps, **size_kwargs(arch, size))
    check_arch(arch)
    cached = _cached_weights(arch)
    if cached:
        return timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay=dict(file=cached), **kwargs
        )
    if not _hub_reachable():
        raise _unavailable(arch, "the Hugging Face Hub cannot be reached (offline?)")
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as e:  # network and hub errors come in many types
        raise _unavailable(arch, f"the download failed ({type(e).__name__}: {e})") from e


def _plain_model(arch: ArchSpec, n_out: int, ps: float, size: int | None) -> nn.Module:
    """The model with its initial weights: a user module as given, else built for `n_out`."""
    if isinstance(arch, nn.Module):
        return arch
    if not isinstance(arch, str):
        return arch(n_out)
    check_arch(arch)
    return timm.create_model(arch, pretrained=False, num_classes=n_out, drop_rate=ps,
                             **size_kwargs(arch, size))


def model_normalization(model: nn.Module) -> tuple[list[float], list[float]] | None:
    """The mean/std the pretrained weights expect (timm's `pretrained_cfg`), if known."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return list(cfg["mean"]), list(cfg["std"])
    return None


def model_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Two parameter groups, body then head, so fastai's `freeze` trains only the head."""
    head_ids = {id(p) for p in params(head_module(model))}
    body = [p for p in params(model) if id(p) not in head_ids]
    head = [p for p in params(model) if id(p) in head_ids]
    return [body, head] if body else [head]


def single_label_learner(dls, arch: ArchSpec, n_out: int, *, pretrained: bool = True,
                         weights: str | None = None, ps: float = 0.0, label_smoothing: float = 0.0,
                         wd: float | None = None, cbs=None, path: str | Path = ".",
                         **fastai_kw) -> Learner:
    """Softmax classifier Learner with accuracy (and top-5 accuracy at 10+ classes).

    `fastai_kw` are the user's fastai pieces (`pieces.Pieces.learner_kwargs`): `loss_func`
    replaces the default loss, `metrics` are added to the default ones (replace them with
    `default_metrics=False`), `opt_func`, `splitter` and `moms` go to the Learner.

    Example:
        >>> learn = single_label_learner(dls, "resnet18", n_out=10, pretrained=False)
    """
    model = create_model(arch, n_out, pretrained, weights, ps, classes=_vocab(dls))
    # Running counts, not fastai's AccumMetric, which keeps every prediction (N x C floats)
    metrics = [TopKAccuracy(1)] + ([TopKAccuracy(5)] if n_out >= 10 else [])
    loss = CrossEntropyLossFlat(label_smoothing=label_smoothing)
    return _learner(dls, model, loss, metrics, wd, cbs, path, pretrained or bool(weights),
                    **fastai_kw)


class MultiLabelLoss(BCEWithLogitsLossFlat):
    """fastai's `BCEWithLogitsLossFlat` whose `decodes` (used by `learn.predict`,
    `show_results`, `get_preds(with_decoded=True)`) applies easycls's tuned per-class
    thresholds, and `at_least_one`, exactly as `easycls.load(...).predict` does."""

    def __init__(self, *args, thresholds=None, at_least_one: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.thresholds, self.at_least_one = thresholds, at_least_one

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        th = self.thresh if self.thresholds is None else self.thresholds
        return _labels(x, th, self.at_least_one)


def _labels(x: torch.Tensor, thresholds, at_least_one: bool) -> torch.Tensor:
    on = labels_on(x.detach().float().cpu().numpy(), thresholds, at_least_one)
    return torch.from_numpy(on).to(x.device).as_subclass(type(x))


class TunedDecodes:
    """The `decodes` `fit` gives the user's own multi-label loss (`loss_func=`, e.g. a focal
    loss): labels at the thresholds tuned on the loss (`loss.thresholds`), as
    `MultiLabelLoss.decodes` does. A class, not a closure, so `learn.export()` pickles it."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _labels(x, self.loss.thresholds, self.loss.at_least_one)


def set_thresholds(learn: Learner, tuned: dict | None) -> None:
    """Make a multi-label Learner decode with the thresholds tuned by `fit` (model.json's).

    The user's own loss (`fit(..., loss_func=...)`) gets them too: `thresholds`,
    `at_least_one` and a `decodes` set on the object (and a sigmoid `activation` when it has
    none), which `learn.predict`, `validate` and `easycls.save` read as they read easycls's.
    """
    loss = learn.loss_func
    if not tuned or not (isinstance(loss, MultiLabelLoss) or _multi_label_data(learn)):
        return
    loss.thresholds, loss.at_least_one = tuned_thresholds(tuned, len(learn.dls.vocab))
    if isinstance(loss, MultiLabelLoss):
        return
    loss.decodes = TunedDecodes(loss)
    if getattr(loss, "activation", None) is None:
        loss.activation = torch.sigmoid


def _multi_label_data(learn: Learner) -> bool:
    """Whether the Learner's targets are multi-label: easycls's datasets say so; fastai's
    infer the loss from the target block, as fastai's Learner does."""
    ds = learn.dls.valid_ds
    if getattr(ds, "multi_label", None) is not None:
        return bool(ds.multi_label)
    return type(getattr(ds, "loss_func", None)).__name__.startswith("BCE")


def current_thresholds(learn: Learner) -> dict | None:
    """The thresholds a multi-label Learner decodes with now, in model.json's form (the
    inverse of `set_thresholds`); None for a single-label Learner."""
    loss = learn.loss_func
    if not (isinstance(loss, BCEWithLogitsLossFlat) or hasattr(loss, "thresholds")):
        return None
    th = getattr(loss, "thresholds", None)
    th = loss.thresh if th is None else th
    scalar = not isinstance(th, (list, tuple)) and torch.as_tensor(th).ndim == 0
    n = len(learn.dls.vocab)
    per_class = [float(th)] * n if scalar else [float(t) for t in th]
    return dict(per_class=per_class, at_least_one=bool(getattr(loss, "at_least_one", False)),
                **({"global": float(th)} if scalar else {}))


def multi_label_learner(
    dls,
    arch: ArchSpec,
    n_out: int,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    ps: float = 0.0,
    pos_weight: torch.Tensor | None = None,
    wd: float | None = None,
    cbs=None,
    path: str | Path = ".",
    **fastai_kw,
) -> Learner:
    """Sigmoid/BCE multi-label Learner with precision, recall and F1 per epoch (at 0.5 while
    training; at the tuned thresholds once `fit` has set them). `fastai_kw`: as
    `single_label_learner`'s.

    Example:
        >>> learn = multi_label_learner(dls, "resnet18", n_out=18, pretrained=False)
    """
    model = create_model(arch, n_out, pretrained, weights, ps, classes=_vocab(dls))
    metrics = [MultiLabelScore(k) for k in ("f1_samples", "f1_micro", "precision_micro",
                                            "recall_micro")]
    loss = MultiLabelLoss(pos_weight=pos_weight)
    return _learner(dls, model, loss, metrics, wd, cbs, path, pretrained or bool(weights),
                    **fastai_kw)


def _vocab(dls) -> list[str] | None:
    vocab = getattr(dls, "vocab", None)
    return [str(c) for c in vocab] if vocab is not None else None


class ClassifierLearner(Learner):
    """fastai's Learner, whose optimizer is rebuilt when its `splitter` is replaced, and
    which fastai's `WandbCallback` can log (`gather_args`).

    fastai builds the optimizer once, from the parameter groups of the splitter of that
    moment; a splitter set later (`learn.splitter = three_groups`) would otherwise leave
    the old groups in place, and `fit_one_cycle(1, slice(1e-5, 1e-3))` would spread its
    learning rates over them.
    """

    @property
    def splitter(self):
        return self.__dict__.get("_splitter", params)

    @splitter.setter
    def splitter(self, fn) -> None:
        if self.__dict__.get("_splitter") is not fn:
            self.__dict__["opt"] = None  # the next fit builds it from the new groups
        self.__dict__["_splitter"] = fn

    def gather_args(self) -> dict:
        """Nothing: fastai's `WandbCallback` formats what this returns with fastcore's
        `init_args`, which fails on every plain value (int, str, bool) in the fastcore this
        fastai runs with; the run's settings reach wandb from `fit` (`trackers.Trackers`)."""
        return {}


def _learner(dls, model, loss, own_metrics, wd, cbs, path, frozen: bool, *, loss_func=None,
             metrics=(), default_metrics: bool = True, splitter=None, **fastai_kw) -> Learner:
    kw = {} if wd is None else {"wd": wd}
    metrics = (list(own_metrics) if default_metrics else []) + list(metrics)
    learn = ClassifierLearner(dls, model, loss_func=loss_func or loss, metrics=metrics,
                              splitter=splitter or model_splitter, cbs=cbs, path=path,
                              model_dir=".", **kw, **fastai_kw)
    if frozen:
        learn.freeze()
    return learn
