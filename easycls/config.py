"""One dataclass declares every training option; a resolved one is saved as `config.json`.

Each field carries its type, default, help text and valid range (`dataclasses.field`
metadata). The `easycls fit` command line and `fit(**settings)` are both built from
this list, so adding an option is one edit here plus the code that uses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .rundir import write_file

__all__ = ["TrainConfig", "ConfigError", "RECIPE_DEFAULTS", "RESUMABLE", "OPTIONS", "option_help",
           "check", "base_type", "parse_duration"]


class ConfigError(UserError, ValueError):
    """A setting with an unknown name, a wrong type or a value out of its range."""


def _opt(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
         above: float | None = None, choices: tuple | None = None, flag: str | None = None,
         kind: str | None = None, factory: Any = None) -> Any:
    """A field with its CLI/validation facts: `lo`/`hi` inclusive bounds, `above` an
    exclusive lower bound, `flag` the CLI spelling of a boolean, `kind`
    path|file|dir|location|duration|lr|separator|list (location: a path or a URL of object
    storage; separator: a non-empty string; list: several of `choices`, kept comma-joined)."""
    meta = dict(help=help, lo=lo, hi=hi, above=above, choices=choices, flag=flag, kind=kind)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a run, enough to repeat it (`config.json` in the run directory)."""

    source: str = _opt("", "Folder, .zip, CSV of labels, or a dataset name.")
    arch: str = _opt("resnet18", "Any timm model name (see `easycls archs`); "
                     "'custom:<module>:<qualname>' records a user nn.Module.")
    epochs: int = _opt(5, "Training epochs (after the frozen epoch when fine-tuning).",
                       lo=1, hi=100_000)
    lr: float | str | None = _opt(None, "Learning rate, or 'find' for fastai's full lr_find "
                                  "(default: an lr_find bounded to 5% of the training steps, or "
                                  "the mode's default lr when that is too few to search).",
                                  above=0.0, hi=10.0, kind="lr")
    bs: int | None = _opt(None, "Batch size per process (default: the largest of 64, 32, 16 "
                          "that gives an epoch 40 steps over all processes).", lo=1, hi=65_536)
    size: int | None = _opt(None, "Image size in pixels (square; default: the size the model "
                            "was made for, from timm's pretrained config).", lo=8, hi=2048)
    pretrained: bool = _opt(True, "Fine-tune ImageNet weights, or train from scratch.",
                            flag="--pretrained/--no-pretrained")
    weights: str | None = _opt(None, "Weights to start from: an easycls run directory or bundle "
                               "folder (its normalization, arch and size come along), or a "
                               "timm-compatible .safetensors or .pth file. Only the head may "
                               "differ from the model.", kind="path")
    valid_pct: float = _opt(0.2, "Validation share when the data has no split.", lo=0.01, hi=0.9)
    split_by: str | None = _opt(None, "Keep groups on one side of the random validation split: "
                                "'duplicates' (near-duplicate images, as `easycls check` finds "
                                "them) or a CSV column (a signer, a patient, a video).")
    seed: int = _opt(42, "Random seed (split, model init, data order).", lo=0, hi=2**32 - 1)
    out: str | None = _opt(None, "Run directory (default runs/<source>-<arch>-<time>).",
                           kind="path")
    overwrite: bool = _opt(False, "Replace the files of an earlier run in --out (refused "
                           "otherwise; --resume continues a run instead).", flag="--overwrite")
    images: str | None = _opt(None, "Image folder (or object-storage URL) for a CSV source.",
                              kind="location")
    path: str | None = _opt(None, "Where a named dataset lies.", kind="path")
    multi_label: bool | None = _opt(None, "Force multi-label or single-label (default: detected).",
                                    flag="--multi-label/--single-label")
    label_delimiter: str = _opt(" ", "Separates the labels in a multi-label CSV cell.",
                                kind="separator")
    wd: float | None = _opt(None, "Weight decay (L2; default fastai's 0.01).", lo=0.0, hi=10.0)
    l1: float = _opt(0.0, "L1 penalty on the weights.", lo=0.0, hi=10.0)
    ps: float = _opt(0.0, "Dropout before the head.", lo=0.0, hi=0.99)
    label_smoothing: float = _opt(0.0, "Label smoothing (single-label).", lo=0.0, hi=0.5)
    freeze_epochs: int | None = _opt(None, "Fine-tuning: epochs with the body frozen, before "
                                     "--epochs of all layers (default: 1 from ImageNet weights, "
                                     "0 from an easycls run's).", lo=0, hi=1000)
    body_lr_ratio: float | None = _opt(None, "Fine-tuning: the body's lr as a share of the "
                                       "head's (default: 0.01 from ImageNet weights, 1 from "
                                       "an easycls run's).", above=0.0, hi=1.0)
    augment: bool | None = _opt(None, "Training augmentation (flips, rotation, zoom, "
                                "lighting). Default: on when fine-tuning and for runs of 10 or "
                                "more epochs; off for shorter runs from scratch, which it slows.",
                                flag="--augment/--no-augment")
    cache: bool | None = _opt(None, "Alias: --cache is --store cache, --no-cache is --store none "
                              "(when --store is not given).", flag="--cache/--no-cache")
    store: str = _opt("auto", "Where training pixels come from: cache (uint8), jpeg (compact "
                      "store), stream (the compact store in chunks in $EASYCLS_STREAM_DIR, "
                      "streamed through a bounded cache), none (decode the originals each "
                      "epoch); auto picks cache, jpeg or none by size and disk.",
                      choices=("auto", "cache", "jpeg", "stream", "none"))
    workers: int | None = _opt(None, "DataLoader worker processes (default: from the cores).",
                               lo=0, hi=256)
    mixed_precision: str | None = _opt(None, "no, fp16 or bf16 (default: bf16 on a capable GPU, "
                                       "and from 64 px on a CPU with native bf16, where it "
                                       "runs the training steps; else no).",
                                       choices=("no", "fp16", "bf16"))
    channels_last: bool | None = _opt(None, "Channels-last memory format (default: on for CUDA "
                                      "and for depthwise-conv models on CPU).",
                                      flag="--channels-last/--no-channels-last")
    compile: bool = _opt(False, "torch.compile the model.", flag="--compile")
    time_budget: float | None = _opt(None, "Wall-time budget (90s, 30m, 2h): the training "
                                     "steps and the one-cycle schedule are planned so the run "
                                     "ends within it (the CLI counts from its start).",
                                     above=0.0, hi=365 * 86400, kind="duration")
    checkpoint_minutes: float | None = _opt(None, "Also checkpoint every M minutes inside epochs.",
                                            above=0.0, hi=10_000)
    keep_checkpoint: bool = _opt(False, "Keep checkpoint.pth (optimizer state, for --resume) "
                                 "when the run completes.", flag="--keep-checkpoint")
    scale_lr: bool = _opt(False, "Multiply the lr by the number of processes.", flag="--scale-lr")
    prior_bias: bool = _opt(True, "Multi-label: start each output at its label's training "
                            "frequency (bias = log-odds).", flag="--prior-bias/--no-prior-bias")
    class_weights: str | None = _opt(None, "auto: BCE pos_weight from label frequencies "
                                     "(multi-label).", choices=("auto",))
    threshold_average: str = _opt("samples", "F1 average the multi-label thresholds maximize.",
                                  choices=("samples", "micro", "macro"))
    quiet: bool = _opt(False, "No progress bar or tables.", flag="--quiet,-q")
    tensorboard: bool = _opt(False, "Also log to TensorBoard (RUN_DIR/tensorboard; needs "
                             "`pip install tensorboard`).", flag="--tensorboard")
    log_json: str | None = _opt(None, "Write JSON-lines events to this file.", kind="path")
    log: str | None = _opt(None, "Experiment trackers to report to, through fastai's callbacks: "
                           "wandb, mlflow, tensorboard, csv (RUN_DIR/log.csv); several: --log "
                           "wandb --log mlflow (log='wandb,mlflow'). Needs the packages of "
                           "easycls's `track` extra.",
                           choices=("wandb", "mlflow", "tensorboard", "csv"), kind="list")
    dist_timeout: float | None = _opt(None, "Seconds a process waits for the others (e.g. while "
                                      "they build a cache) before the job fails (default: "
                                      "$EASYCLS_DIST_TIMEOUT, else 2h).", above=0.0,
                                      hi=7 * 86400, kind="duration")
    extra: dict[str, Any] = _opt(None, "Recipe-specific settings (set by the recipe).",
                                 factory=dict)
    fastai: dict[str, Any] = _opt(None, "The fastai pieces given to fit (callbacks, loss, "
                                  "metrics, optimizer, splitter), by import path.",
                                  factory=dict)

    def __post_init__(self) -> None:
        # `cache` is an alias of a `store` value, resolved here once: the rest reads `store`.
        if self.cache is not None:
            if self.store == "auto":
                self.store = "cache" if self.cache else "none"
            self.cache = None

    def to_json(self, path: str | Path) -> None:
        write_file(path, self.to_text())

    def to_text(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """The config of `path`, every value checked as an option is (type, range).

        Raises:
            ConfigError: the file is not a JSON object, or a value is wrong (naming the file
                and the key).
        """
        try:
            data = json.loads(Path(path).read_bytes())
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
            raise ConfigError(f"{path} cannot be read as JSON ({e})") from None
        bad = [k for k in _RECORDS if not isinstance(data.get(k, {}), dict)] if isinstance(
            data, dict) else ["extra"]
        if bad:
            raise ConfigError(f"{path} must hold a JSON object of settings (with '{bad[0]}' an "
                              "object), as `easycls fit` writes it")
        try:
            return cls().updated(**{k: v for k, v in data.items() if k in _FIELDS})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`, each checked against its field (name, type, range).

        Raises:
            ConfigError: naming the setting, what was wrong and the valid values.
        """
        return dataclasses.replace(self, **{k: check(k, v) for k, v in changes.items()})


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = typing.get_type_hints(TrainConfig)

# Records filled by fit, not options: `extra` by recipes, `fastai` from fit's fastai pieces.
_RECORDS = ("extra", "fastai")

# The settings a user passes.
OPTIONS = tuple(name for name in _FIELDS if name not in _RECORDS)

# Defaults a recipe may set; anything the user passes wins over them.
RECIPE_DEFAULTS = ("arch", "epochs", "bs", "size", "pretrained", "lr", "valid_pct", "multi_label")

# What `resume` may change: how long and how it runs, not what it trains.
RESUMABLE = ("epochs", "time_budget", "checkpoint_minutes", "quiet", "workers", "log_json",
             "keep_checkpoint", "log")


def option_help(name: str) -> str:
    """The help text of an option, with its valid range."""
    meta = _FIELDS[name].metadata
    valid = _valid(name)
    return f"{meta['help']} [{valid}]" if valid else meta["help"]


def base_type(name: str) -> type:
    """The type of option `name` without its None."""
    args = [a for a in typing.get_args(_TYPES[name]) if a is not type(None)]
    return args[0] if args else _TYPES[name]


def _valid(name: str) -> str:
    """The valid values of `name` in words ("" when any value of its type goes)."""
    meta = _FIELDS[name].metadata
    if meta["choices"]:
        some = "one or more of " if meta["kind"] == "list" else "one of "
        return some + ", ".join(repr(c) for c in meta["choices"])
    lo = f">= {meta['lo']:g}" if meta["lo"] is not None else None
    lo = f"> {meta['above']:g}" if meta["above"] is not None else lo
    hi = f"<= {meta['hi']}" if meta["hi"] is not None else None
    return " and ".join(x for x in (lo, hi) if x)


def _fail(name: str, value: Any, what: str) -> ConfigError:
    help = _FIELDS[name].metadata["help"] if name in _FIELDS else ""
    return ConfigError(f"{name}={value!r}: {what}" + (f" ({help})" if help else ""))


def check(name: str, value: Any) -> Any:
    """`value` as setting `name` takes it; None (not given) passes as is."""
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r}; valid settings: {', '.join(_FIELDS)}")
    if value is None or name in _RECORDS:
        return value
    meta = _FIELDS[name].metadata
    if meta["kind"] == "list":
        return _listed(name, value)
    value = _typed(name, value)
    if meta["kind"] == "lr" and value == "find":
        return value
    if meta["choices"] and value not in meta["choices"]:
        raise _fail(name, value, f"must be {_valid(name)}")
    if meta["kind"] == "separator" and not value:
        raise _fail(name, value, "must not be empty (e.g. ' ', '|' or ';')")
    bad_lo = meta["lo"] is not None and value < meta["lo"]
    bad_above = meta["above"] is not None and value <= meta["above"]
    if bad_lo or bad_above or (meta["hi"] is not None and value > meta["hi"]):
        raise _fail(name, value, f"must be {_valid(name)}")
    return value


def _typed(name: str, value: Any) -> Any:
    kind, want = _FIELDS[name].metadata["kind"], base_type(name)
    if kind == "duration" and isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as e:
            raise _fail(name, value, str(e)) from None
    if kind == "lr" and isinstance(value, str):
        return _lr(name, value)
    if kind and isinstance(value, os.PathLike):
        return os.fspath(value)
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(want, True)
    if not ok:
        raise _fail(name, value, f"must be {'a' if want is not int else 'an'} {want.__name__}, "
                    f"not {type(value).__name__}")
    if want is float:
        if not math.isfinite(value):
            raise _fail(name, value, "must be a finite number")
        return float(value)
    return value


def _listed(name: str, value: Any) -> str:
    """A list option as its comma-joined text: from "a,b", "a b" or ["a", "b"]."""
    parts = value.replace(",", " ").split() if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) for p in parts):
        raise _fail(name, value, f"must be {_valid(name)}, as text or a list of names")
    bad = [p for p in parts if p not in _FIELDS[name].metadata["choices"]]
    if bad or not parts:
        raise _fail(name, value, f"must be {_valid(name)}")
    return ",".join(dict.fromkeys(parts))


def _lr(name: str, text: str) -> float | str:
    """A learning rate written as text: a number, or "find"."""
    if text.strip().lower() == "find":
        return "find"
    try:
        return float(text)
    except ValueError:
        raise _fail(name, text, "must be a number or 'find'") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """Seconds in "90s", "30m", "2h", "1h30m" or a bare number of seconds.

    Example:
        >>> parse_duration("1h30m")
        5400.0
    """
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    whole = re.fullmatch(r"(\d+(\.\d+)?[smhd]?)+", s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", s) if whole else []
    seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"cannot read the duration {text!r}: write e.g. 90s, 30m, 2h or 1h30m")
    return float(seconds)
