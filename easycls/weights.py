"""Weights to start training from (`weights=`): an easycls run directory or bundle folder, a
`.safetensors` file or a `.pth` state dict.

Reading never runs code from the file: safetensors, or `torch.load(weights_only=True)`,
unwrapped as timm's `load_state_dict` does (`state_dict`/`model` of a checkpoint, DDP's
`module.` stripped); timm's own reader is not used because it answers a refused pickle
with "retry with weights_only=False".

Loading is strict except for the head: every tensor of the model's body must be in the
file with its shape, and the file may hold nothing else. The head is loaded only when its
shape fits and, where the source names its classes, the classes are the same; otherwise it
keeps its fresh initialization. `check_fits` does the comparison on
the meta device, so `fit` refuses wrong weights before it reads any data.

A run directory or bundle also brings what it was trained with: its `model.json` gives the
normalization, the architecture and the input size a new run defaults to.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import clean_state_dict
from torch import nn

from .bundle import META, WEIGHTS, read_meta
from .bundle_schema import CUSTOM
from .config import ConfigError
from .models import size_kwargs

__all__ = ["IMAGENET_SCHEDULE", "RUN_SCHEDULE", "default_schedule", "StartWeights",
           "WeightsError", "start_weights", "read_state", "head_module",
           "head_keys", "load_start", "check_fits"]

_SHOWN = 3  # tensors named in a mismatch line

# Fine-tuning schedules by where the weights come from: (frozen epochs, body lr / head lr).
IMAGENET_SCHEDULE = (1, 0.01)  # fastai's `fine_tune`: far-off features, move them gently
RUN_SCHEDULE = (0, 1.0)        # an easycls run's own weights: measured, docs/weights.md


class WeightsError(ConfigError):
    """Weights that cannot start this run: missing, unreadable, unsafe, or of another model."""


@dataclass(frozen=True)
class StartWeights:
    """Where a run's starting weights come from.

    Attributes:
        given: the path as the user gave it.
        file: the tensor file.
        kind: "run" (a run directory), "bundle" (model.json beside the tensors) or "file".
        meta: the source's checked model.json (run and bundle), else None.
    """

    given: str
    file: Path
    kind: str
    meta: dict | None = None

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """The (mean, std) the source was trained with, from its model.json."""
        return (list(self.meta["mean"]), list(self.meta["std"])) if self.meta else None

    @property
    def arch(self) -> str | None:
        """The source's timm architecture (None for a plain file or a custom model)."""
        arch = self.meta["arch"] if self.meta else None
        return None if arch is None or arch.startswith(CUSTOM) else arch

    def describe(self) -> str:
        """How the summary line names the weights and the normalization they bring."""
        if self.meta is None:
            return f"weights from {self.given} (normalized as the architecture's pretrained config)"
        what = "the run" if self.kind == "run" else "the bundle"
        return (f"weights from {what} {self.given} ({self.meta['arch']}, "
                f"{len(self.meta['classes'])} classes; normalized as that run, from its {META})")


def _fail(given: str, what: str) -> WeightsError:
    return WeightsError(f"weights={given!r}: {what}")


def start_weights(given: str | Path) -> StartWeights:
    """The source of `given`: a run directory, a bundle folder, or a weights file.

    Raises:
        WeightsError: nothing there, or a folder that holds no bundle.

    Example:
        >>> start_weights("runs/digits-resnet18").normalization
    """
    text, path = str(given), Path(given)
    if path.is_dir():
        if not (path / WEIGHTS).is_file() or not (path / META).is_file():
            raise _fail(text, f"the folder holds no {WEIGHTS} and {META}: give a run directory "
                        "that `easycls fit` completed, a bundle folder, or a weights file")
        kind = "run" if (path / "config.json").is_file() else "bundle"
        return StartWeights(text, path / WEIGHTS, kind, _meta(text, path))
    if not path.is_file():
        raise _fail(text, "no such file or folder; give an easycls run directory, a bundle "
                    "folder, a .safetensors or a .pth file")
    if path.name == WEIGHTS and (path.parent / META).is_file():  # a bundle's own tensor file
        return StartWeights(text, path, "bundle", _meta(text, path.parent))
    return StartWeights(text, path, "file")


def default_schedule(weights: str | Path | None) -> tuple[int, float]:
    """(frozen epochs, body lr ratio) for fine-tuning from `weights` (None: ImageNet weights).

    Example:
        >>> default_schedule("runs/digits-resnet18")
        (0, 1.0)
    """
    if weights and start_weights(weights).meta is not None:
        return RUN_SCHEDULE
    return IMAGENET_SCHEDULE


def _meta(given: str, folder: Path) -> dict:
    try:
        return read_meta(folder)
    except ValueError as e:  # BundleError: model.json damaged or not easycls's
        raise _fail(given, str(e)) from None


def read_state(src: StartWeights) -> dict[str, torch.Tensor]:
    """The tensors of `src` by name, read without running code from the file.

    Raises:
        WeightsError: unreadable, a pickle of more than tensors, or no state dict inside.
    """
    try:
        if src.file.suffix == ".safetensors":
            state = load_file(str(src.file))
        else:
            state = _unwrapped(torch.load(src.file, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError:
        raise _fail(src.given, _UNSAFE.format(f=src.file)) from None
    except Exception as e:  # safetensors, zip and pickle readers raise many types
        why = str(e).splitlines()[0] if str(e) else ""
        raise _fail(src.given, f"cannot be read as weights ({type(e).__name__}: {why}); give a "
                    ".safetensors file or a .pth state dict") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise _fail(src.given, "holds no state dict (a mapping of tensor names to tensors)")
    return clean_state_dict(state)  # timm's: DDP's `module.` and torch.compile's prefixes go


def _unwrapped(obj):
    """A training checkpoint's state dict (timm's keys: EMA first, then `state_dict`, `model`)."""
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


_UNSAFE = ("is a pickle that holds more than tensors, which torch.load(weights_only=True) "
           "refuses: easycls loads only safetensors files and plain state dicts, since reading "
           "any other pickle can run code. If you trust the file, convert it once: python -c "
           "\"import timm.models, safetensors.torch as st; st.save_file(timm.models."
           "load_state_dict('{f}', weights_only=False), '{f}.safetensors')\" and pass the "
           ".safetensors file")


def head_module(model: nn.Module) -> nn.Module:
    """The classifier: timm's `get_classifier()`, else the last child holding parameters."""
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return head
    children = [c for c in model.children() if any(True for _ in c.parameters())]
    return children[-1] if children else model


def head_keys(model: nn.Module) -> set[str]:
    """State-dict names of the head (the classifier timm's config names, and `head_module`)."""
    head = head_module(model)
    prefixes = {name for name, m in model.named_modules() if m is head and name}
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes |= {named} if isinstance(named, str) else set(named)
    return {k for k in model.state_dict()
            if any(k == p or k.startswith(p + ".") for p in prefixes)}


def _filtered(state: dict, model: nn.Module) -> dict:
    """`state` through the model module's `checkpoint_filter_fn` where timm has one (as timm's
    own pretrained loading does: it resamples a ViT's position embedding to the input size,
    and maps original-format weights to timm's names)."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None or not type(model).__module__.startswith("timm."):
        return state
    try:
        return dict(fn(dict(state), model))
    except Exception:  # a filter that does not apply to these tensors: compare them as they are
        return state


def _mismatch(model: nn.Module, state: dict, head: set[str]) -> tuple[int, int, list[str]]:
    """(body tensors matched, body tensors in all, lines for those that do not)."""
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in head}
    bad = []
    for k, shape in wanted.items():
        if k not in state:
            bad.append(f"{k} (not in the file)")
        elif tuple(state[k].shape) != shape:
            bad.append(f"{k} (file {list(state[k].shape)}, model {list(shape)})")
    heads = {k.rsplit(".", 1)[0] for k in head}
    bad += [f"{k} (not in the model)" for k in state
            if k not in wanted and k not in head and k.rsplit(".", 1)[0] not in heads]
    matched = sum(1 for k, s in wanted.items() if k in state and tuple(state[k].shape) == s)
    return matched, len(wanted), bad


def _refuse(src: StartWeights, arch: str, counts: tuple[int, int, list[str]]) -> WeightsError:
    matched, total, bad = counts
    hint = (f"they are a {src.arch} (its {META}): pass arch={src.arch!r}" if src.arch
            and src.arch != arch else "pass the architecture they were trained with (arch=...)")
    more = f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    return _fail(src.given, f"{matched} of {total} body tensors fit {arch}; not: "
                 f"{', '.join(bad[:_SHOWN])}{more}. Only the head may differ: {hint}, or train "
                 "without weights=")


def load_start(model: nn.Module, src: StartWeights, arch: str,
               classes: list[str] | None = None) -> bool:
    """Load `src` into `model`: the whole body, and the head where it fits (see the module).

    Returns:
        Whether the head was loaded too.

    Raises:
        WeightsError: a body tensor missing, mis-shaped or left over, in one line.
    """
    state, head = _filtered(read_state(src), model), head_keys(model)
    counts = _mismatch(model, state, head)
    if counts[2]:
        raise _refuse(src, arch, counts)
    own = model.state_dict()
    same_classes = not (src.meta and classes) or list(src.meta["classes"]) == list(classes)
    take_head = same_classes and all(k in state and state[k].shape == own[k].shape for k in head)
    chosen = {k: v for k, v in state.items() if k in own and (take_head or k not in head)}
    model.load_state_dict(chosen, strict=False)
    return take_head


def check_fits(arch: str | nn.Module, src: StartWeights, size: int | None) -> None:
    """Refuse weights whose body does not fit `arch` (a timm name or a model instance) before
    any data is read: a timm model is built on the meta device (no memory, no compute), and
    only shapes are compared.

    Raises:
        WeightsError: as `load_start` does.
    """
    if isinstance(arch, nn.Module):
        model = arch
    else:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=2,
                                      **size_kwargs(arch, size))
    state, head = _filtered(read_state(src), model), head_keys(model)
    counts = _mismatch(model, state, head)
    if counts[2]:
        raise _refuse(src, arch if isinstance(arch, str) else type(arch).__name__, counts)
