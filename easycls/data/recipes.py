"""Named datasets: where their files lie, how they are laid out, and their training defaults.

A recipe turns a Kaggle download, as downloaded (zip or extracted, any usual nesting),
into an `ItemTable`. Where the data is looked for, in order: an explicit `path=`
(`--path`), `$EASYCLS_DATA/<name>`, `~/data/<name>`, `./data/<name>` (each also as
`<name>.zip` and under the dataset's other usual names). No network call is made:
when nothing is found, the error lists the places searched and the download command.

Example:
    >>> from easycls import fit
    >>> learn = fit("animals15", path="~/Downloads/archive.zip")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import write_json, write_label_rows
from . import builtin
from .items import DataError, ItemTable
from .layouts import BUILTIN, LAYOUTS
from .sources import closest
from .tree import Tree

__all__ = [
    "Recipe",
    "RECIPES",
    "get_recipe",
    "is_recipe",
    "locate",
    "search_places",
    "dataset_table",
    "detect",
    "read_recipe_layout",
]


@dataclass
class Recipe:
    """A named dataset: a loader from a TrainConfig to an ItemTable, and default settings.

    Attributes:
        layouts: alternative sets of paths that together identify the dataset root
            (e.g. `("wnids.txt", "train")`); used to find the root at any nesting.
        download: what to run to get the data (shown when it is not found).
        aliases: other folder or zip names the download usually has.
        size: images, classes and download size, for `easycls datasets`.
        after_fit: `(run_dir, predictor, table, test) -> None`, run by `fit` on the main
            process after the run directory is written (test scores, submissions); `test`
            is `predict.decisions` over `table.test_refs` (None without test images).
    """

    name: str
    description: str
    load: Callable[[Any], ItemTable]   # (TrainConfig) -> ItemTable
    defaults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"flip": False}
    layouts: tuple[tuple[str, ...], ...] = ()
    download: str = ""
    aliases: tuple[str, ...] = ()
    size: str = ""
    after_fit: Callable[[Path, Any, ItemTable, Any], None] | None = None


# --- finding the data --------------------------------------------------------------------

_MAX_DEPTH = 3  # Kaggle nests a dataset at most this deep (`X/X/...`) inside its zip or folder


def search_places(recipe: Recipe, path: str | os.PathLike | None = None) -> list[Path]:
    """Candidate locations for a recipe's data, in search order (they may not exist)."""
    if path is not None:
        return [Path(path).expanduser()]
    bases = (
        [Path(os.environ["EASYCLS_DATA"]).expanduser()] if os.environ.get("EASYCLS_DATA") else []
    )
    bases += [Path.home() / "data", Path("data")]
    names = (recipe.name, *recipe.aliases)
    return [b / f"{n}{ext}" for b in bases for n in names for ext in ("", ".zip")]


def _root_in_zip(path: Path, markers: tuple[str, ...]) -> Tree | None:
    """The dataset root inside a zip, at the shallowest nesting that has all `markers`."""
    top = Tree(path)
    present = top.paths()
    shallow = {d for d in top.dirs() if d.count("/") < _MAX_DEPTH}
    for prefix in sorted({""} | shallow, key=lambda d: (d.count("/"), d)):
        head = f"{prefix}/" if prefix else ""
        if all(head + m in present for m in markers):
            return Tree(path, prefix)
    return None


def _subfolders(root: Path, depth: int) -> list[Path]:
    """Folders below `root` to `depth` levels, skipping big ones (class folders hold no dataset)."""
    level, out = [root], []
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                kids = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            nxt += kids if len(kids) <= 50 else []
        out += nxt
        level = nxt
    return out


def _root_at(p: Path, recipe: Recipe) -> Tree | None:
    """The dataset root given its root, its parent, a folder inside it, or its zip.

    Layouts are tried in order over all candidate folders, so the most specific one
    wins (ASL's `asl_alphabet_train/asl_alphabet_train` must not pass for the root).
    """
    if p.is_file() and p.suffix.lower() == ".zip":
        return next((t for m in recipe.layouts if (t := _root_in_zip(p, m)) is not None), None)
    if p.is_file():  # a file of the dataset, e.g. its train.csv
        p = p.parent
    if not p.is_dir():
        return None
    p = p.resolve()
    folders = [p, *list(p.parents)[:_MAX_DEPTH]] + _subfolders(p, _MAX_DEPTH - 1)
    zips = sorted(z for z in p.iterdir() if z.suffix.lower() == ".zip" and z.is_file())
    for markers in recipe.layouts:
        for d in folders:
            if all((d / m).exists() for m in markers):
                return Tree(d)
        for z in zips:
            if (tree := _root_in_zip(z, markers)) is not None:
                return tree
    return None


def locate(recipe: Recipe, path: str | os.PathLike | None = None) -> Tree:
    """Find a recipe's data (see the module docstring for the search order).

    Raises:
        DataError: nothing found; the message lists the places searched and how to download.

    Example:
        >>> locate(get_recipe("tiny-imagenet")).where()   # doctest: +SKIP
        '/home/me/data/tiny-imagenet/tiny-imagenet-200'
    """
    places = search_places(recipe, path)
    for p in places:
        if (tree := _root_at(p, recipe)) is not None:
            return tree
    expected = " or ".join(" + ".join(m) for m in recipe.layouts)
    if path is not None:
        found = (
            "does not exist"
            if not places[0].exists()
            else f"does not contain the {recipe.name} layout ({expected})"
        )
        raise DataError(f"{places[0]} {found}. Give the dataset folder, its parent or its Kaggle "
                        "zip"
                        + (f"; download it with: {recipe.download}" if recipe.download else ""))
    listed = "\n  ".join(str(p) for p in places)
    raise DataError(f"dataset {recipe.name!r} not found; looked for a folder or zip holding "
                    f"{expected} in:\n  {listed}\nDownload it with: {recipe.download}\nthen pass "
                    f"path=... (--path), or put it in $EASYCLS_DATA/{recipe.name} (no download is "
                    "attempted).")


def _specific(markers: tuple[str, ...]) -> bool:
    # train/ + val/ alone is any split-folder dataset; only distinctive markers identify a recipe.
    return any(m.lower() not in ("train", "val", "valid", "test") for m in markers)


def detect(path: str | os.PathLike) -> tuple[str, Tree] | None:
    """(recipe name, root) when a folder or zip given as a plain path holds a recipe's layout.

    So `fit("~/Downloads/archive.zip")` reads the animals zip with its given splits
    instead of taking `Training Data/` for a class.
    """
    p = Path(path).expanduser()
    for r in RECIPES.values():
        for markers in filter(_specific, r.layouts):
            if p.is_file() and p.suffix.lower() == ".zip":
                tree = _root_in_zip(p, markers)
            else:
                tree = next((Tree(d) for d in [p, *_subfolders(p, _MAX_DEPTH - 1)] if p.is_dir()
                             and all((d / m).exists() for m in markers)), None)
            if tree is not None:
                return r.name, tree
    return None


def read_recipe_layout(name: str, tree: Tree, cfg) -> ItemTable:
    """Read `tree` with recipe `name`'s layout (used for plain paths that hold one)."""
    table = LAYOUTS[name](tree, cfg)
    table.name = name
    return table


def _located(name: str) -> Callable[[Any], ItemTable]:
    """A Recipe.load that finds the data first, then reads its layout."""
    def load(cfg) -> ItemTable:
        return read_recipe_layout(name, locate(RECIPES[name], getattr(cfg, "path", None)), cfg)
    return load


# --- after training ----------------------------------------------------------------------

def score_test(run_dir: Path, predictor, table: ItemTable, test=None) -> None:
    """Write `test_metrics.json` (accuracy on the labelled test images) and `class_names.json`.

    `test`: the `predict.decisions` over `table.test_refs` that `fit` made for
    `test_predictions.csv` (no image is read twice; `fit` makes it whenever there are test
    images); unreadable images are counted, not scored.
    """
    if table.class_names:
        write_json(run_dir / "class_names.json", table.class_names)
    if not table.test_refs or not table.test_labels:
        return
    decided, bad = test
    scored = [i for i, labs in enumerate(table.test_labels) if labs]
    hits = [decided[i][0] == table.test_labels[i][0] for i in scored if i in decided]
    metrics = {
        "test_accuracy": sum(hits) / max(len(hits), 1),
        "n_test": len(hits),
        "n_unreadable": sum(i in bad for i in scored),
    }
    write_json(run_dir / "test_metrics.json", metrics)


def write_submission(run_dir: Path, predictor, table: ItemTable, test=None) -> None:
    """`submission.csv` (`ImageID,Labels`, labels space-separated) for every id of test.csv, in
    order (`test` as in `score_test`).

    An unreadable test image gets an empty Labels cell (listed in `submission.skipped.txt`)
    and a warning, so the file still has one row per id as Kaggle requires.
    """
    score_test(run_dir, predictor, table, test)
    if not table.test_ids:
        return
    bad = write_label_rows(run_dir / "submission.csv", ("ImageID", "Labels"),
                           list(table.test_ids), list(range(len(table.test_refs))),
                           test or ({}, {}))
    if bad:
        warnings.warn(f"{len(bad)} unreadable test image(s) have empty labels in submission.csv: "
                      f"{list(bad)[:5]}", stacklevel=2)


# --- the catalogue -----------------------------------------------------------------------

def _embedded(name: str, epochs: int, px: int, size: str) -> Recipe:
    """A recipe of an embedded dataset: a small model from scratch, offline; digits are not
    flipped."""
    return Recipe(name, builtin.describe(name), BUILTIN[name],
                  dict(arch="resnet18", epochs=epochs, bs=64, size=px, pretrained=False, lr=3e-3),
                  dict(flip=False), size=size)


# Real datasets fine-tune ImageNet weights at sizes near the images' own; the embedded
# datasets train small models from scratch offline in about a minute on 2 CPU cores.
RECIPES: dict[str, Recipe] = {
    "digits": _embedded("digits", 5, 32, "1,797 images, 10 classes, 32x32"),
    "digits-multilabel": _embedded("digits-multilabel", 6, 48, "3,600 images, 10 labels, 64x64"),
    "asl": Recipe(
        "asl",
        "ASL alphabet: photos of hand signs, 29 classes (A-Z, del, nothing, space); "
        "scored on the 28 labelled test photos",
        _located("asl"),
        dict(arch="resnet34", epochs=3, bs=64, size=128, pretrained=True),
        layouts=(("asl_alphabet_train", "asl_alphabet_test"), ("asl_alphabet_train",)),
        download="kaggle datasets download -d grassknoted/asl-alphabet",
        aliases=("asl-alphabet", "asl_alphabet"),
        size="87,000 images, 29 classes, 200x200, 1.1 GB",
        after_fit=score_test,
    ),
    "animals15": Recipe(
        "animals15",
        "15 animal classes with given train/validation/test splits, read straight from the zip",
        _located("animals15"),
        dict(arch="resnet50", epochs=5, bs=64, size=224, pretrained=True),
        layouts=(("Training Data", "Validation Data"),),
        download="kaggle datasets download -d utkarshsaxenadn/animal-image-classification-dataset",
        aliases=("animal-image-classification-dataset", "animals", "archive"),
        size="15 classes; train, validation and test given",
        after_fit=score_test,
    ),
    "tiny-imagenet": Recipe(
        "tiny-imagenet",
        "Tiny ImageNet: 200 classes at 64x64, val labelled by "
        "val_annotations.txt; "
        "top-1 and top-5 accuracy",
        _located("tiny-imagenet"),
        dict(arch="resnet50", epochs=10, bs=128, size=64, pretrained=True),
        layouts=(("wnids.txt", "train", "val"),),
        download="kaggle datasets download -d akash2sharma/tiny-imagenet "
        "(or http://cs231n.stanford.edu/tiny-imagenet-200.zip)",
        aliases=("tiny-imagenet-200", "tiny_imagenet"),
        size="110,000 images, 200 classes, 64x64, 0.25 GB",
        after_fit=score_test,
    ),
    "imagenet": Recipe(
        "imagenet",
        "ImageNet-1k (ILSVRC 2012): train/val class folders, or Kaggle's layout with "
        "LOC_val_solution.csv",
        _located("imagenet"),
        dict(arch="resnet50", epochs=16, bs=128, size=224, pretrained=False, lr=2e-3),
        layouts=(("LOC_val_solution.csv", "ILSVRC/Data/CLS-LOC/train"), ("train", "val")),
        download="kaggle competitions download -c imagenet-object-localization-challenge",
        aliases=("ILSVRC", "imagenet-object-localization-challenge", "imagenet1k"),
        size="1.33M images, 1,000 classes, 155 GB",
        after_fit=score_test,
    ),
    "comp5329": Recipe(
        "comp5329",
        "COMP5329 multi-label images (labels 1-19, captions ignored); writes a Kaggle "
        "submission.csv for test.csv",
        _located("comp5329"),
        dict(arch="resnet50", epochs=8, bs=64, size=224, pretrained=True, multi_label=True),
        layouts=(("train.csv", "data"),),
        download="the COMP5329 assignment-2 Kaggle competition's data (COMP5329S1A2Dataset)",
        aliases=("COMP5329S1A2Dataset", "comp5329s1a2"),
        size="40,000 images (30k labelled), 18 labels",
        after_fit=write_submission,
    ),
}


def is_recipe(name: str) -> bool:
    return name in RECIPES


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; an unknown name gets the closest recipe names in the error."""
    if name not in RECIPES:
        hint = closest(Path(name).stem.lower(), list(RECIPES)) or closest(name, list(RECIPES))
        what = (
            f"{name!r} is neither an existing file or folder nor a dataset name"
            if _looks_like_path(name)
            else f"unknown dataset {name!r}"
        )
        raise DataError(
            what
            + (f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ".")
            + f" Known datasets: {', '.join(RECIPES)}; or give a folder, zip or CSV "
            "path."
        )
    return RECIPES[name]


def _looks_like_path(name: str) -> bool:
    return (
        "/" in name or "\\" in name or Path(name).suffix.lower() in (".zip", ".csv", ".tsv", ".txt")
    )


def dataset_table() -> list[dict[str, str]]:
    """One row per recipe: name, found ("yes"/"no"/"embedded"), where, size, description, download.

    Example:
        >>> [r["name"] for r in dataset_table()][:2]
        ['digits', 'digits-multilabel']
    """
    rows = []
    for r in RECIPES.values():
        found, where = "embedded", str(builtin.data_home() / r.name)
        if r.layouts:
            try:
                found, where = "yes", locate(r).where()
            except DataError:
                found, where = "no", ""
        rows.append(
            dict(
                name=r.name,
                found=found,
                where=where,
                size=r.size,
                description=r.description,
                download=r.download,
            )
        )
    return rows
