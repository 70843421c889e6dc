"""One dataclass holds every resolved training setting; it is saved as `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "RECIPE_DEFAULTS"]


@dataclass
class TrainConfig:
    """Every setting of a run, enough to repeat it (`config.json` in the run directory)."""

    source: str = ""                 # folder, zip, CSV or recipe name, as given
    arch: str = "resnet18"           # timm model name ("custom:<Class>" for a user nn.Module)
    epochs: int = 5                  # planned epochs (after the frozen epoch when fine-tuning)
    lr: float | None = None          # None: chosen by fastai's lr_find
    bs: int = 64                     # batch size per process
    size: int = 224                  # training image size (square, pixels)
    pretrained: bool = True          # fine-tune from ImageNet weights (fastai fine_tune)
    weights: str | None = None       # local timm-compatible weights file instead of the hub
    valid_pct: float = 0.2           # random validation share when the data has no split
    seed: int = 42                   # seeds the split, the model init and the data order
    out: str | None = None           # run directory; default runs/<source>-<arch>-<time>
    images: str | None = None        # image folder for a CSV source
    path: str | None = None          # where a recipe's data lies (overrides the search)
    multi_label: bool | None = None  # None: detected from the labels
    label_delimiter: str = " "       # separates labels in a multi-label CSV cell
    wd: float | None = None          # weight decay (L2); None keeps fastai's default (0.01)
    l1: float = 0.0                  # L1 penalty on the weights (added to the loss)
    ps: float = 0.0                  # dropout before the classifier head
    label_smoothing: float = 0.0     # cross-entropy label smoothing (single-label only)
    freeze_epochs: int = 1           # frozen-body epochs when fine-tuning
    augment: bool = True             # flips, small rotations, zoom and lighting on training batches
    cache: bool | None = None        # decoded-image cache; None: on when it fits the disk budget
    workers: int | None = None       # DataLoader workers; None: from the available cores
    mixed_precision: str | None = None  # "no" | "fp16" | "bf16"; None: bf16 on capable CUDA, else no
    channels_last: bool | None = None   # None: on for CUDA, and on CPU for depthwise-conv models
    compile: bool = False            # torch.compile the model
    time_budget: float | None = None # seconds of training wall time; epochs are planned to fit
    checkpoint_minutes: float | None = None  # also checkpoint inside long epochs
    scale_lr: bool = False           # multiply lr by the number of processes
    class_weights: str | None = None # "auto": BCE pos_weight from label frequencies (multi-label)
    threshold_average: str = "samples"  # F1 average the multi-label thresholds maximize
    quiet: bool = False              # no progress bar or tables
    tensorboard: bool = False        # also log to TensorBoard (needs tensorboard installed)
    log_json: str | None = None      # write JSON-lines events to this file
    extra: dict[str, Any] = field(default_factory=dict)  # recipe-specific settings

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def updated(self, **changes: Any) -> TrainConfig:
        """A copy with `changes`; unknown names fail with the list of valid ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; valid settings: {sorted(known)}")
        return dataclasses.replace(self, **changes)


# Defaults a recipe may set; anything the user passes wins over them.
RECIPE_DEFAULTS = ("arch", "epochs", "bs", "size", "pretrained", "lr", "valid_pct", "multi_label")
