"""How each named dataset is laid out: its files and label files read into an `ItemTable`.

One reader per recipe, from the dataset's root (a `Tree`: a folder, or a folder inside a
zip) to a table with its given splits; finding that root is `recipes.locate`'s job.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from . import builtin
from .items import DataError, ItemTable
from .sources import from_csv, from_folder, from_tree, resolve_in_tree
from .tables import read_id_csv, read_label_csv
from .tree import Tree

__all__ = ["LAYOUTS", "BUILTIN"]


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


# Readers of a located root, by recipe name.
LAYOUTS = {
    "asl": _asl,
    "animals15": _animals15,
    "tiny-imagenet": _tiny_imagenet,
    "imagenet": _imagenet,
    "comp5329": _comp5329,
}

# The embedded datasets need no root: (TrainConfig) -> ItemTable.
BUILTIN = {
    "digits": _digits,
    "digits-multilabel": _digits_multilabel,
}
