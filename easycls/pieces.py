"""The fastai pieces `fit` takes besides its settings, with fastai's names: `cbs`,
`loss_func`, `metrics`, `opt_func`, `splitter`, `moms`, `batch_tfms`, `item_tfms`.

They are objects, not plain values, so they are keyword arguments of `fit` only, not
command-line options. `config.json` names each one by import path, with its arguments
where they are plain values (`describe`); `--resume` refuses to continue a run whose
pieces are not given again (`missing_on_resume`), since the checkpoint alone cannot
rebuild them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .config import ConfigError

__all__ = ["PIECES", "Pieces", "split_pieces", "describe", "missing_on_resume", "logs_only",
           "augmentation_note", "validation_note"]

# `default_metrics=False` makes `metrics` replace easycls's per-epoch metrics.
PIECES = ("cbs", "loss_func", "metrics", "default_metrics", "opt_func", "splitter", "moms",
          "batch_tfms", "item_tfms")

_PLAIN = (bool, int, float, str, type(None))


@dataclass
class Pieces:
    """The user's fastai pieces of one `fit` call (None / empty: easycls's own)."""

    cbs: list = field(default_factory=list)
    loss_func: Any = None
    metrics: list = field(default_factory=list)
    default_metrics: bool = True
    opt_func: Any = None
    splitter: Any = None
    moms: tuple | None = None
    batch_tfms: list = field(default_factory=list)
    item_tfms: list = field(default_factory=list)  # fastai's per-item pipeline (itemwise)
    data: Any = None   # the user's DataLoaders or DataBlock (`fit(dls)`, `fit(block, source)`)
    items: Any = None  # a DataBlock's source

    def learner_kwargs(self) -> dict:
        """What the Learner factories take of these (callbacks are added by `fit`)."""
        kw = dict(loss_func=self.loss_func, opt_func=self.opt_func, splitter=self.splitter,
                  moms=self.moms, metrics=self.metrics, default_metrics=self.default_metrics)
        return {k: v for k, v in kw.items() if v is not None}

    def record(self) -> dict:
        """config.json's `fastai` entry: each piece given, described (`describe`)."""
        out: dict[str, Any] = {}
        for name in ("cbs", "metrics", "batch_tfms", "item_tfms"):
            if getattr(self, name):
                out[name] = [describe(o) for o in getattr(self, name)]
        for name in ("loss_func", "opt_func", "splitter"):
            if getattr(self, name) is not None:
                out[name] = describe(getattr(self, name))
        if self.moms is not None:
            out["moms"] = [float(m) for m in self.moms]
        if not self.default_metrics:
            out["default_metrics"] = False
        if self.data is not None:
            out["data"] = {"import": describe(self.data)["import"]}
            if self.items is not None:
                out["data"]["items"] = str(self.items)
        return out


def _listed(name: str, value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def split_pieces(settings: dict) -> tuple[Pieces, dict]:
    """(the fastai pieces in `settings`, the other settings).

    Raises:
        ConfigError: `moms` that is not three numbers, or `default_metrics` not a bool.
    """
    rest = {k: v for k, v in settings.items() if k not in PIECES}
    given = {k: settings[k] for k in PIECES if settings.get(k) is not None}
    moms = given.get("moms")
    if moms is not None and (len(tuple(moms)) != 3
                             or not all(isinstance(m, (int, float)) for m in moms)):
        raise ConfigError(f"moms={moms!r}: must be three numbers, as fastai's "
                          "(0.95, 0.85, 0.95)")
    if not isinstance(given.get("default_metrics", True), bool):
        raise ConfigError("default_metrics must be True (metrics= adds to easycls's) or False "
                          "(metrics= replaces them)")
    batch_tfms = _listed("batch_tfms", given.get("batch_tfms"))
    own = [type(t).__name__ for t in batch_tfms
           if type(t).__name__ in ("IntToFloatTensor", "Normalize")]
    if own:
        raise ConfigError(f"batch_tfms: leave out {', '.join(own)}: easycls converts to float "
                          "and normalizes every batch itself (with the model's statistics)")
    pieces = Pieces(cbs=_listed("cbs", given.get("cbs")),
                    metrics=_listed("metrics", given.get("metrics")),
                    batch_tfms=batch_tfms,
                    item_tfms=_listed("item_tfms", given.get("item_tfms")),
                    loss_func=given.get("loss_func"), opt_func=given.get("opt_func"),
                    splitter=given.get("splitter"),
                    moms=tuple(moms) if moms is not None else None,
                    default_metrics=given.get("default_metrics", True))
    return pieces, rest


def augmentation_note(pieces: Pieces, augment: bool | None) -> str:
    """What the training augmentation is, in words, when `batch_tfms` or `item_tfms` were
    given ("" else)."""
    kinds = [k for k in ("item_tfms", "batch_tfms") if getattr(pieces, k)]
    if not kinds:
        return ""
    names = ", ".join(type(t).__name__ for k in kinds for t in getattr(pieces, k))
    yours = f"your {' and '.join(kinds)} ({names})"
    if augment:
        return f"augmentation: easycls's and {yours}"
    return f"augmentation: {yours}, replacing easycls's (augment=True keeps both)"


def validation_note(pieces: Pieces) -> str:
    """One line when some `batch_tfms` also change validation images: the bundle cannot."""
    both = [type(t).__name__ for t in pieces.batch_tfms if _changes_validation(t)]
    if not both:
        return ""
    return (f"note: batch_tfms {', '.join(both)} also change validation images; the saved bundle "
            "(easycls.load, predict) cannot carry them and only resizes and normalizes")


def _changes_validation(tfm: Any) -> bool:
    """Whether a batch transform also changes validation batches. fastai's random ones run
    on training batches only; its affine ones (Flip, Rotate, Zoom, ...) run everywhere but
    are the identity outside training unless they resize (`size`)."""
    if getattr(tfm, "split_idx", None) == 0:
        return False
    from fastai.vision.augment import AffineCoordTfm
    return not (isinstance(tfm, AffineCoordTfm) and getattr(tfm, "size", None) is None)


def _import_path(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "__main__"
    return f"{module}:{getattr(obj, '__qualname__', None) or type(obj).__name__}"


def _plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)


def describe(obj: Any) -> dict:
    """`{"import": "module:qualname", "args": {...}}` of a function, class, partial or
    instance; `args` holds the constructor arguments that are plain values (fastai stores
    them as attributes), `name` a metric's name.

    Example:
        >>> describe(EarlyStoppingCallback(monitor="valid_loss", patience=1))["args"]
        {'monitor': 'valid_loss', 'comp': None, 'min_delta': 0.0, 'patience': 1, ...}
    """
    if isinstance(obj, partial):
        args = {k: v for k, v in obj.keywords.items() if _plain(v)}
        return {"import": _import_path(obj.func), "args": args}
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
        return {"import": _import_path(obj)}
    out: dict[str, Any] = {"import": _import_path(type(obj))}
    try:
        names = list(inspect.signature(type(obj).__init__).parameters)[1:]
    except (TypeError, ValueError):
        names = []
    args = {n: getattr(obj, n) for n in names
            if hasattr(obj, n) and _plain(getattr(obj, n, None))}
    if args:
        out["args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}
    name = getattr(obj, "name", None)
    if isinstance(name, str):
        out["name"] = name
    return out


def _imports(entry: Any) -> list[str]:
    entries = entry if isinstance(entry, list) else [entry]
    return [e["import"] if isinstance(e, dict) else repr(e) for e in entries]


def missing_on_resume(recorded: dict, given: Pieces) -> list[str]:
    """The recorded pieces not given again (or given as something else), in words."""
    now = given.record()
    missing = []
    for name, entry in recorded.items():
        if name in ("moms", "default_metrics"):
            if now.get(name) != entry:
                missing.append(f"{name}={entry!r}")
            continue
        want, have = _imports(entry), _imports(now.get(name, []))
        if sorted(want) != sorted(have):
            missing.append(f"{name}=[{', '.join(want)}]" if isinstance(entry, list)
                           else f"{name}={want[0]}")
    return missing


# fastai's callbacks that only log: one process of a multi-process run is enough.
_LOGGING_MODULES = ("fastai.callback.wandb", "fastai.callback.tensorboard",
                    "fastai.callback.comet", "fastai.callback.azureml",
                    "fastai.callback.neptune", "fastai.callback.progress")


def logs_only(cb: Any) -> bool:
    """True for a callback that only reports (fastai's loggers, progress bars, CSVLogger,
    or any callback with `main_only = True`): it runs on rank 0 alone."""
    if getattr(cb, "main_only", False):
        return True
    module = type(cb).__module__ or ""
    return module.startswith(_LOGGING_MODULES) or type(cb).__name__ == "CSVLogger"
