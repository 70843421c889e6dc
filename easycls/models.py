"""Models by name, without fastai (`easycls.load` uses this too): timm names built at the
input size they are trained at, and custom models recorded by import path.

timm models made for one input size (ViT, DeiT, Swin, LeViT, CoAtNet, ...) get `img_size`;
`check_size` tells before any data is read whether an architecture runs at a size, and
names sizes that do when it does not; `default_size` is timm's `pretrained_cfg` size.

model.json's `arch` for a user model is ``"custom:<module>:<qualname>"``: the class of an
`nn.Module` instance, or a callable ``n_classes -> nn.Module``. `easycls.load` imports it
and builds the model (a class with no arguments or with the class count, a callable with
the class count) when its module is importable; else it asks for `load(dir, model=...)`.
No fastai here: loading a bundle stays light.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import timm
import torch
from torch import nn

from .errors import UserError

__all__ = ["PREFIX", "ArchError", "SizeError", "custom_arch_name", "build_custom", "default_size",
           "check_size", "size_kwargs"]

PREFIX = "custom:"


class ArchError(UserError, ValueError):
    """Unknown architecture name."""


class SizeError(ArchError):
    """An architecture that cannot run at the image size asked for."""


def _pretrained_cfg(name: str):
    try:
        return timm.models.get_pretrained_cfg(name)
    except Exception:  # names timm does not know, or without a registered config
        return None


def default_size(arch: Any) -> int:
    """The input size the model was made for (timm's `pretrained_cfg`); 224 when unknown.

    Example:
        >>> default_size("mobilevit_xxs")
        256
    """
    cfg = _pretrained_cfg(arch) if isinstance(arch, str) else None
    size = getattr(cfg, "input_size", None)
    return int(size[-1]) if size else 224


def size_kwargs(name: str, size: int | None) -> dict:
    """`img_size` for models built for one input size (ViT, DeiT, Swin, LeViT, CoAtNet, ...)."""
    cfg = _pretrained_cfg(name)
    if size is None or not getattr(cfg, "fixed_input_size", False):
        return {}
    return {} if tuple(cfg.input_size[-2:]) == (size, size) else {"img_size": size}


def _runs_at(name: str, size: int, device: str = "meta") -> bool:
    """Whether `name` builds and runs a forward pass at `size` (on the meta device: no memory,
    no compute; a failure there is confirmed on the CPU, since a few ops lack meta kernels)."""
    try:
        with torch.device(device), torch.no_grad():
            model = timm.create_model(name, pretrained=False, num_classes=2,
                                      **size_kwargs(name, size))
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception:  # shape asserts, tensor-size mismatches, unexpected `img_size`
        return device == "meta" and size <= 1024 and _runs_at(name, size, "cpu")
    return True


def check_size(arch: Any, size: int) -> None:
    """Raise `SizeError`, naming sizes that work, when a timm `arch` cannot train at `size`.

    Cheap (a forward pass on the meta device), so `fit` calls it before reading any data.

    Example:
        >>> check_size("levit_128s", 50)
        Traceback (most recent call last):
        SizeError: levit_128s cannot run at size 50; sizes that work: 32, 48, 64, 224. Pass --size
        48 (size=48).
    """
    if not isinstance(arch, str) or not timm.is_model(arch) or _runs_at(arch, size):
        return
    native = default_size(arch)
    near = {m * (size // m + k) for m in (16, 32) for k in (0, 1)} - {size, native}
    works = sorted([s for s in near if s >= 16 and _runs_at(arch, s)]
                   + ([native] if _runs_at(arch, native) else []))
    if not works:
        raise SizeError(f"{arch} cannot run at size {size} and easycls found no size that works; "
                        "choose another architecture")
    best = min(works, key=lambda s: (abs(s - size), s))
    if works == [native]:
        raise SizeError(f"{arch} needs size {native}; pass --size {native} (size={native})")
    raise SizeError(f"{arch} cannot run at size {size}; sizes that work: "
                    f"{', '.join(map(str, works))}. Pass --size {best} (size={best}).")


def custom_arch_name(arch: Any) -> str:
    """``custom:<module>:<qualname>`` of an `nn.Module` instance's class or of a callable.

    Example:
        >>> custom_arch_name(torch.nn.Linear(2, 2))
        'custom:torch.nn.modules.linear:Linear'
    """
    target = type(arch) if isinstance(arch, nn.Module) else arch
    module = getattr(target, "__module__", None) or "__main__"
    qualname = getattr(target, "__qualname__", None) or type(target).__name__
    return f"{PREFIX}{module}:{qualname}"


def _resolve(arch: str) -> Any:
    module, sep, qualname = arch[len(PREFIX):].partition(":")
    if not sep or module == "__main__" or "<locals>" in qualname:
        raise ImportError(f"{arch} names no importable module")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def build_custom(arch: str, n_classes: int) -> nn.Module:
    """The model named by a ``custom:`` arch, built for `n_classes` outputs.

    Raises:
        ValueError: not importable here, or not constructible without arguments; the
            message says to pass an instance: ``load(dir, model=...)``.
    """
    hint = "; pass an instance of the model: easycls.load(dir, model=...)"
    try:
        target = _resolve(arch)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"the run holds a custom model ({arch}) that cannot be imported here "
                         f"({e}){hint}") from e
    for args in ((), (n_classes,)) if inspect.isclass(target) else ((n_classes,),):
        try:
            model = target(*args)
        except TypeError:
            continue
        if isinstance(model, nn.Module):
            return model
    raise ValueError(f"the run's custom model {arch} cannot be built from its name alone{hint}")


