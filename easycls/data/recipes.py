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
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import write_json
from . import builtin
from .sources import (
    DataError,
    ItemTable,
    Tree,
    closest,
    from_csv,
    from_folder,
    from_tree,
    resolve_in_tree,
)
from .tables import read_id_csv, read_label_csv

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
        after_fit: `(run_dir, predictor, table) -> None`, run by `fit` on the main
            process after the run directory is written (test scores, submissions).
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
    after_fit: Callable[[Path, Any, ItemTable], None] | None = None


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
    table = _LAYOUTS[name](tree, cfg)
    table.name = name
    return table


def _located(layout: Callable[[Tree, Any], ItemTable], name: str) -> Callable[[Any], ItemTable]:
    """A Recipe.load that finds the data first, then reads its layout."""
    def load(cfg) -> ItemTable:
        table = layout(locate(RECIPES[name], getattr(cfg, "path", None)), cfg)
        table.name = name
        return table
    return load


# --- reading the layouts -----------------------------------------------------------------

def _combine(train: ItemTable, valid: ItemTable | None, test: ItemTable | None = None) -> ItemTable:
    """One table from a given train/valid (and labelled test) split; classes match by name."""
    valid_refs = valid.refs if valid else []
    table = ItemTable(
        train.refs + valid_refs,
        train.labels + (valid.labels if valid else []),
        [False] * len(train.refs) + [True] * len(valid_refs) if valid else None,
        root=train.root,
    )
    if test is not None:
        table.test_refs, table.test_labels = test.refs, test.labels
    return table


def _labelled_test(test: ItemTable, classes: list[str], where: str) -> ItemTable:
    extra = sorted(set(test.classes) - set(classes))
    if extra:
        raise DataError(f"test class(es) {extra[:10]} in {where} have no training images")
    return test


def _asl(tree: Tree, cfg) -> ItemTable:
    table = from_tree(tree.sub("asl_alphabet_train"))
    if tree.exists("asl_alphabet_test"):
        test = tree.sub("asl_alphabet_test")
        refs = test.images()
        # Test files are `<label>_test.jpg`: the label lies in the name, not in a folder.
        labels = [Path(r).stem.rsplit("_test", 1)[0] for r in refs]
        table.test_refs = [test.ref(r) for r in refs]
        known = set(table.classes)  # once, not per test item
        table.test_labels = [[lab] if lab in known else [] for lab in labels]
    return table


def _animals15(tree: Tree, cfg) -> ItemTable:
    train = from_tree(tree.sub("Training Data"))
    valid = from_tree(tree.sub("Validation Data"))
    test = None
    if tree.exists("Testing Data"):
        test = _labelled_test(
            from_tree(tree.sub("Testing Data")), train.classes, tree.where("Testing Data")
        )
    table = _combine(train, valid, test)
    table.root = tree.where()
    return table


def _word_names(text: str, wanted: set[str]) -> dict[str, str]:
    """`n01443537<TAB or space>goldfish, Carassius auratus` lines -> {wnid: "goldfish"}."""
    names = {}
    for line in text.splitlines():
        wnid, _, words = line.strip().replace("\t", " ").partition(" ")
        if wnid in wanted and words.strip():
            names[wnid] = words.split(",")[0].strip()
    return names


def _annotated(
    tree: Tree, folder: str, pairs: list[tuple[str, str]], rows: list[int], listed_in: str
) -> ItemTable:
    """Items whose labels come from an annotation file rather than from folders."""
    refs = resolve_in_tree([f for f, _ in pairs], rows, tree.sub(folder), listed_in)
    return ItemTable(refs, [[lab] for _, lab in pairs], root=tree.where(folder))


def _tiny_imagenet(tree: Tree, cfg) -> ItemTable:
    wnids = tree.read_text("wnids.txt").split()
    train = from_tree(tree.sub("train"))  # train/<wnid>/images/*.JPEG; the *_boxes.txt are ignored
    unknown = sorted(set(train.classes) - set(wnids))
    if unknown:
        raise DataError(f"train folder(s) {unknown[:10]} in {tree.where('train')} are not listed "
                        "in wnids.txt")
    lines = [ln.split("\t") for ln in tree.read_text("val/val_annotations.txt").splitlines()]
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if len(ln) >= 2]
    valid = _annotated(tree, "val/images", [(ln[0].strip(), ln[1].strip()) for _, ln in numbered],
                       [i for i, _ in numbered], tree.where("val/val_annotations.txt"))
    table = _combine(train, valid)
    if tree.exists("test/images"):
        test = tree.sub("test/images")
        table.test_refs = [test.ref(r) for r in test.images()]
    words = tree.read_text("words.txt") if tree.exists("words.txt") else ""
    table.class_names = _word_names(words, set(wnids))
    table.root = tree.where()
    return table


def _imagenet_dirs(tree: Tree) -> str:
    return "ILSVRC/Data/CLS-LOC/" if tree.exists("ILSVRC/Data/CLS-LOC/train") else ""


def _loc_val(tree: Tree, val_dir: str) -> ItemTable:
    """Kaggle's flat val/ folder labelled by LOC_val_solution.csv (`ImageId,PredictionString`)."""
    lines = tree.read_text("LOC_val_solution.csv").splitlines()
    pairs, rows = [], []
    for i, line in enumerate(lines[1:], 2):  # the first line is the header
        image_id, _, boxes = line.partition(",")
        if boxes.split():
            pairs.append((image_id.strip(), boxes.split()[0]))  # first box's synset is the label
            rows.append(i)
    return _annotated(tree, val_dir, pairs, rows, tree.where("LOC_val_solution.csv"))


def _imagenet(tree: Tree, cfg) -> ItemTable:
    base = _imagenet_dirs(tree)
    train = from_tree(tree.sub(base + "train"))
    val = tree.sub(base + "val")
    flat = val.images() and all("/" not in f for f in val.images())
    if flat and tree.exists("LOC_val_solution.csv"):
        valid = _loc_val(tree, base + "val")
    else:
        valid = from_tree(val)
    table = _combine(train, valid)
    mapping = next((f for f in ("LOC_synset_mapping.txt", "words.txt") if tree.exists(f)), None)
    table.class_names = _word_names(tree.read_text(mapping), set(table.classes)) if mapping else {}
    table.root = tree.where()
    return table


def _comp5329(tree: Tree, cfg) -> ItemTable:
    # The label files are read from real paths; inside a zip they are copied out first.
    with tempfile.TemporaryDirectory() as tmp:
        train_csv = tree.extract("train.csv", Path(tmp))
        labels = read_label_csv(train_csv, label_delimiter=cfg.label_delimiter or " ")
        test_ids = (
            read_id_csv(tree.extract("test.csv", Path(tmp)))
            if tree.exists("test.csv")
            else ([], [])
        )
    where = tree.where("train.csv")
    refs = resolve_in_tree(labels.files, labels.rows, tree.sub("data"), where)
    table = ItemTable(refs, labels.labels, root=tree.where())
    table.test_refs = resolve_in_tree(
        test_ids[0], test_ids[1], tree.sub("data"), tree.where("test.csv")
    )
    table.test_ids = test_ids[0]  # submission rows, in test.csv order
    return table


def _from_builtin_csvs(root: Path) -> ItemTable:
    train = from_csv(root / "train.csv", root / "images")
    valid = from_csv(root / "valid.csv", root / "images")
    return _combine(train, valid)


def _digits(cfg) -> ItemTable:
    table = from_folder(builtin.materialize("digits"))
    table.name = "digits"
    return table


def _digits_multilabel(cfg) -> ItemTable:
    root = builtin.materialize("digits-multilabel")
    table = _from_builtin_csvs(root)
    table.root, table.name = str(root), "digits-multilabel"
    return table


# --- after training ----------------------------------------------------------------------

def _readable(refs: list[str]) -> tuple[list[int], dict[int, str]]:
    from .images import check_images
    bad = check_images(refs)
    return [i for i in range(len(refs)) if i not in bad], bad


def score_test(run_dir: Path, predictor, table: ItemTable) -> None:
    """Write `test_metrics.json` (accuracy on the labelled test images) and `class_names.json`."""
    if table.class_names:
        write_json(run_dir / "class_names.json", table.class_names)
    if not table.test_refs or not table.test_labels:
        return
    scored = [i for i, labs in enumerate(table.test_labels) if labs]
    good, bad = _readable([table.test_refs[i] for i in scored])
    preds = predictor.predict_many([table.test_refs[scored[j]] for j in good])
    hits = [pred == table.test_labels[scored[j]][0] for j, (pred, _) in zip(good, preds)]
    metrics = {
        "test_accuracy": sum(hits) / max(len(hits), 1),
        "n_test": len(hits),
        "n_unreadable": len(bad),
    }
    write_json(run_dir / "test_metrics.json", metrics)


def write_submission(run_dir: Path, predictor, table: ItemTable) -> None:
    """`submission.csv` (`ImageID,Labels`, labels space-separated) for every id of test.csv, in
    order.

    An unreadable test image gets an empty Labels cell (listed in `submission.skipped.txt`)
    and a warning, so the file still has one row per id as Kaggle requires.
    """
    from ..predict import write_submission as write_rows  # predict imports the model stack

    score_test(run_dir, predictor, table)
    if not table.test_ids:
        return
    _, bad = write_rows(
        predictor,
        table.test_refs,
        run_dir / "submission.csv",
        fmt="ImageID,Labels",
        ids=table.test_ids,
    )
    if bad:
        warnings.warn(f"{len(bad)} unreadable test image(s) have empty labels in submission.csv: "
                      f"{list(bad)[:5]}", stacklevel=2)


# --- the catalogue -----------------------------------------------------------------------

# Real datasets fine-tune ImageNet weights at sizes near the images' own; the embedded
# datasets train small models from scratch offline in about a minute on 2 CPU cores.
RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        "digits",
        builtin.describe("digits"),
        _digits,
        dict(arch="resnet18", epochs=5, bs=64, size=32, pretrained=False, lr=3e-3),
        dict(flip=False),
        size="1,797 images, 10 classes, 32x32",
    ),
    "digits-multilabel": Recipe(
        "digits-multilabel",
        builtin.describe("digits-multilabel"),
        _digits_multilabel,
        dict(arch="resnet18", epochs=6, bs=64, size=48, pretrained=False, lr=3e-3),
        dict(flip=False),
        size="3,600 images, 10 labels, 64x64",
    ),
    "asl": Recipe(
        "asl",
        "ASL alphabet: photos of hand signs, 29 classes (A-Z, del, nothing, space); "
        "scored on the 28 labelled test photos",
        _located(_asl, "asl"),
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
        _located(_animals15, "animals15"),
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
        _located(_tiny_imagenet, "tiny-imagenet"),
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
        _located(_imagenet, "imagenet"),
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
        _located(_comp5329, "comp5329"),
        dict(arch="resnet50", epochs=8, bs=64, size=224, pretrained=True, multi_label=True),
        layouts=(("train.csv", "data"),),
        download="the COMP5329 assignment-2 Kaggle competition's data (COMP5329S1A2Dataset)",
        aliases=("COMP5329S1A2Dataset", "comp5329s1a2"),
        size="40,000 images (30k labelled), 18 labels",
        after_fit=write_submission,
    ),
}


_LAYOUTS = {
    "asl": _asl,
    "animals15": _animals15,
    "tiny-imagenet": _tiny_imagenet,
    "imagenet": _imagenet,
    "comp5329": _comp5329,
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
