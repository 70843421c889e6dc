"""`fit --split-by` (groups kept on one side of the random split) and fit's leakage warning."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
from conftest import TINY, write_class_folders

import easycls
from easycls.check.planted import shapes_image
from easycls.check.split import exact_leaks, groups_kept, split_groups
from easycls.config import TrainConfig
from easycls.data.items import DataError
from easycls.data.prepare import load_items, random_split, run_items


def test_random_split_is_unchanged_without_groups():
    rng = np.random.default_rng(7)
    old = np.zeros(50, dtype=bool)
    old[rng.permutation(50)[:10]] = True  # the split as it was made before groups existed
    assert random_split(50, 0.2, 7) == old.tolist()


def test_grouped_split_keeps_each_group_on_one_side():
    groups = [i // 5 for i in range(100)]  # 20 groups of 5
    a = random_split(100, 0.2, 3, groups)
    assert a == random_split(100, 0.2, 3, groups)  # seeded
    assert sum(a) == 20 and a != random_split(100, 0.2, 4, groups)
    for g in range(20):
        assert len({a[i] for i in range(100) if groups[i] == g}) == 1
    assert groups_kept(groups) == 20 and groups_kept(None) == 0


def _with_copies(root):
    write_class_folders(root, classes=("a", "b"), per_class=10, seed=4)
    rng = np.random.default_rng(0)
    for c in ("a", "b"):  # structured images, so that copies differ from non-copies
        for i in range(10):
            shapes_image("ab".index(c), rng, 40).save(root / c / f"{c}_{i}.png")
    for c in ("a", "b"):
        for i in range(3):
            shutil.copy(root / c / f"{c}_{i}.png", root / c / f"{c}_{i}_copy.png")
    return root


def test_split_groups_from_duplicates_and_from_a_csv_column(tmp_path):
    root = _with_copies(tmp_path / "d")
    table = load_items(TrainConfig(source=str(root)))
    ids = split_groups(table, "duplicates")
    name = {r.rsplit("/", 1)[1]: g for r, g in zip(table.refs, ids)}
    assert all(name[f"{c}_{i}.png"] == name[f"{c}_{i}_copy.png"] for c in "ab" for i in range(3))
    assert groups_kept(ids) == 6
    csv = tmp_path / "labels.csv"
    csv.write_text("file,label,signer\n" + "".join(
        f"{c}/{c}_{i}.png,{c},s{i % 4}\n" for c in "ab" for i in range(10)))
    table = load_items(TrainConfig(source=str(csv), images=str(root)))
    assert split_groups(table, "signer")[:5] == ["s0", "s1", "s2", "s3", "s0"]
    with pytest.raises(DataError, match="no such column.*file, signer|no such column"):
        split_groups(table, "patient")
    split = load_items(TrainConfig(source=str(root)))
    split.is_valid = [False] * len(split.refs)
    with pytest.raises(DataError, match="brings its own"):
        split_groups(split, "duplicates")


def test_exact_leaks_by_size_then_bytes_in_folders_and_zips(tmp_path):
    root = write_class_folders(tmp_path / "f", classes=("a",), per_class=4)
    shutil.copy(root / "a/a_0.png", root / "a/copy.png")
    train = [str(root / f"a/a_{i}.png") for i in range(3)]
    assert exact_leaks(train, [str(root / "a/copy.png"), str(root / "a/a_3.png")]) == [
        (train[0], str(root / "a/copy.png"))]
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(root / "a/a_1.png", "t/1.png")
        z.write(root / "a/a_1.png", "v/1.png")
        z.write(root / "a/a_2.png", "v/2.png")
    ref = f"{zpath}!/"
    assert exact_leaks([ref + "t/1.png"], [ref + "v/1.png", ref + "v/2.png"]) == [
        (ref + "t/1.png", ref + "v/1.png")]


def test_fit_split_by_duplicates_keeps_copies_together(tmp_path, capsys):
    root = _with_copies(tmp_path / "d")
    learn = easycls.fit(str(root), out=str(tmp_path / "run"), split_by="duplicates",
                        valid_pct=0.3, **{**TINY, "quiet": False})
    out = capsys.readouterr().out
    assert "6 groups kept on one side (duplicates)" in out and "warning:" not in out
    table = load_items(TrainConfig(source=str(root)))
    valid = set(learn.dls.valid_ds.pixels.refs)
    assert 0 < len(valid) < len(table.refs) == 26
    for c in "ab":
        for i in range(3):
            sides = {str(root / c / f"{c}_{i}{s}.png") in valid for s in ("", "_copy")}
            assert len(sides) == 1
    with pytest.raises(DataError, match="not rebuilt here"):
        run_items(tmp_path / "run")


def test_fit_warns_in_one_line_when_valid_copies_train(split_folders, tmp_path, capsys):
    shutil.copy(split_folders / "train/cat/cat_0.png", split_folders / "valid/cat/again.png")
    easycls.fit(str(split_folders), out=str(tmp_path / "run"), **{**TINY, "quiet": False})
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("warning:")]
    assert len(lines) == 1 and "1 validation images are exact copies" in lines[0]
    assert "valid/cat/again.png = " in lines[0] and "easycls check" in lines[0]
