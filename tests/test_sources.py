"""Generic layouts read by `from_path`: class folders, split folders, CSV + images, and a zip of
each."""

from __future__ import annotations

import numpy as np
import pytest
import replicas as R

from easycls.data.sources import DataError, ItemTable, Tree, from_path


def _classes(root, classes=("cat", "dog", "fox"), n=3, seed=0):
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        R.class_folder(root / c, ci, n, rng, lambda i, c=c: f"{c}_{i}.jpg")
    return root


def _both(root, tmp_path) -> tuple[ItemTable, ItemTable]:
    """The folder and its zip (with a top folder, as `zip -r pets.zip pets/` makes)."""
    return from_path(root), from_path(R.make_zip(root, tmp_path / "archive.zip", inner=root.name))


def _rel(ref: str) -> str:
    return ref.split("!/", 1)[1].split("/", 1)[1] if "!/" in ref else ref


def test_class_folders(tmp_path):
    folder, zipped = _both(_classes(tmp_path / "pets"), tmp_path)
    for t in (folder, zipped):
        assert t.classes == ["cat", "dog", "fox"] and len(t.refs) == 9 and t.is_valid is None
        assert all(r.split("/")[-2] == lab[0] for r, lab in zip(t.refs, t.labels))
    assert all("archive.zip!/pets/" in r for r in zipped.refs)


@pytest.mark.parametrize(
    "train, valid, test",
    [("train", "valid", "test"), ("Train", "VAL", "Test"), ("training", "validation", "testing")],
)
def test_split_folders(train, valid, test, tmp_path):
    root = tmp_path / "split"
    _classes(root / train, n=3)
    _classes(root / valid, n=1, seed=1)
    R.class_folder(root / test, 0, 2, np.random.default_rng(2), lambda i: f"unknown_{i}.jpg")
    for t in _both(root, tmp_path):
        assert t.classes == ["cat", "dog", "fox"]
        assert sum(t.is_valid) == 3 and len(t.refs) == 12
        assert all((valid + "/") in r for r, v in zip(t.refs, t.is_valid) if v)
        assert len(t.test_refs) == 2 and t.test_labels is None


def test_labelled_test_folder_and_no_valid(tmp_path):
    root = tmp_path / "split"
    _classes(root / "train", n=3)
    _classes(root / "test", n=1, seed=1)
    for t in _both(root, tmp_path):
        assert t.classes == ["cat", "dog", "fox"] and len(t.refs) == 9
        assert t.is_valid is None  # a random split is made later
        assert [lab[0] for lab in t.test_labels] == ["cat", "dog", "fox"]


def test_kaggle_double_nesting(tmp_path):
    root = tmp_path / "download"
    _classes(root / "flowers" / "flowers", classes=("rose", "tulip"))
    for t in _both(root, tmp_path):
        assert t.classes == ["rose", "tulip"] and len(t.refs) == 6


def test_validation_without_train_is_an_error(tmp_path):
    root = tmp_path / "split"
    _classes(root / "valid")
    _classes(root / "cats")
    with pytest.raises(DataError, match="validation folder but no train/ folder"):
        from_path(root)


def test_csv_with_images_folder_and_ids_without_extension(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        R.write(tmp_path / "images" / f"{i}.jpg", i % 2, rng)
    rows = [f"{i},{'cat' if i % 2 == 0 else 'dog'}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    t = from_path(tmp_path / "labels.csv")  # images/ beside the CSV is found
    assert t.classes == ["cat", "dog"] and [r.rsplit("/", 1)[1] for r in t.refs] == [
        f"{i}.jpg" for i in range(6)
    ]


def test_multilabel_csv_with_free_text(tmp_path):
    root = R.comp5329(tmp_path)
    t = from_path(root / "train.csv", root / "data")
    assert t.multi_label and t.labels[2] == ["1", "3"] and len(t.refs) == 15


def test_tree_on_folder_and_zip(tmp_path):
    root = _classes(tmp_path / "pets", n=1)
    (root / "notes.txt").write_text("hello")
    z = R.make_zip(root, tmp_path / "pets.zip", inner="top/pets")
    for tree in (Tree(root), Tree(z, "top/pets")):
        assert tree.images() == ["cat/cat_0.jpg", "dog/dog_0.jpg", "fox/fox_0.jpg"]
        assert tree.exists("cat") and tree.exists("notes.txt") and not tree.exists("emu")
        assert tree.read_text("notes.txt") == "hello"
        assert tree.sub("cat").images() == ["cat_0.jpg"]
        assert {"cat", "dog", "fox"} <= tree.dirs()
    assert Tree(z, "top/pets").ref("cat/cat_0.jpg").endswith("pets.zip!/top/pets/cat/cat_0.jpg")


def test_unknown_file_type(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(DataError, match="don't know how to read a .h5 file"):
        from_path(tmp_path / "model.h5")
