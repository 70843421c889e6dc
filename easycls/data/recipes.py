"""Named datasets: where their files lie, how they are laid out, and their training defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import builtin
from .sources import DataError, ItemTable, closest, from_csv, from_folder

__all__ = ["Recipe", "RECIPES", "get_recipe", "is_recipe"]


@dataclass
class Recipe:
    """A named dataset: a loader from a data path to an ItemTable, and default settings."""

    name: str
    description: str
    load: Callable[[Any], ItemTable]   # (TrainConfig) -> ItemTable
    defaults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"flip": False}


def _digits(cfg) -> ItemTable:
    table = from_folder(builtin.materialize("digits"))
    table.name = "digits"
    return table


def _digits_multilabel(cfg) -> ItemTable:
    root = builtin.materialize("digits-multilabel")
    train = from_csv(root / "train.csv", root / "images")
    valid = from_csv(root / "valid.csv", root / "images")
    table = ItemTable(train.refs + valid.refs, train.labels + valid.labels,
                      [False] * len(train.refs) + [True] * len(valid.refs), root=str(root), name="digits-multilabel")
    return table


# Small, from-scratch defaults: the embedded datasets must train offline in about a minute on 2 CPU cores.
RECIPES: dict[str, Recipe] = {
    "digits": Recipe("digits", builtin.describe("digits"), _digits,
                     dict(arch="resnet18", epochs=5, bs=64, size=32, pretrained=False, lr=3e-3),
                     dict(flip=False)),
    "digits-multilabel": Recipe("digits-multilabel", builtin.describe("digits-multilabel"), _digits_multilabel,
                                dict(arch="resnet18", epochs=6, bs=64, size=48, pretrained=False, lr=3e-3),
                                dict(flip=False)),
}


def is_recipe(name: str) -> bool:
    return name in RECIPES


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        hint = closest(name, list(RECIPES))
        raise DataError(f"unknown dataset {name!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                        + f" Known datasets: {', '.join(RECIPES)}; or give a folder, zip or CSV path.")
    return RECIPES[name]
