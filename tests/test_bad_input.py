"""Bad input: a clear error saying what was found, or a recorded skip; never a crash mid-epoch."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import replicas as R
from conftest import TINY

import easycls
from easycls.data.sources import DataError, from_path


def _folders(root, classes=("cat", "dog"), n=6, seed=0, kinds=()):
    """Class folders of good JPEGs, plus one image of each of `kinds` per class."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        R.class_folder(root / c, ci, n, rng, lambda i, c=c: f"{c}_{i}.jpg")
        for kind in kinds:
            ext = ".png" if kind in ("rgba", "palette", "16bit") else ".jpg"
            R.write(root / c / f"{kind}{ext}", ci, rng, kind)
    return root


ODD = ("gray", "palette", "rgba", "cmyk", "16bit")  # decodable: converted to RGB, never skipped
BROKEN = ("truncated", "zero", "text")                # unreadable: skipped and listed


@pytest.mark.parametrize("cache", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_unreadable_skipped_and_listed_odd_formats_train(cache, tmp_path, capsys):
    root = _folders(tmp_path / "pets", n=3, kinds=ODD + BROKEN)
    learn = easycls.fit(
        str(root), out=str(tmp_path / "run"), cache=cache, **{**TINY, "quiet": False}
    )
    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    reasons = {line.split("\t")[0].rsplit("/", 2)[-1]: line.split("\t")[1] for line in lines}
    assert len(lines) == 6 and set(reasons.values()) == {
        "truncated",
        "zero-byte file",
        "not an image",
    }
    assert reasons["truncated.jpg"] == "truncated" and reasons["zero.jpg"] == "zero-byte file"
    # all the readable ones
    assert len(learn.dls.train_ds) + len(learn.dls.valid_ds) == 2 * (3 + len(ODD))
    assert "6 unreadable skipped" in capsys.readouterr().out  # counted in the summary
    pixels = learn.dls.train_ds.pixels
    assert all(pixels[i].shape == (pixels.size, pixels.size, 3) for i in range(len(pixels)))


def test_os_litter_ignored_and_extensions_any_case(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for ci, c in enumerate(("cat", "dog")):
        for ext in (".JPEG", ".Jpg", ".png", ".PNG", ".webp"):
            R.write(root / c / f"{c}{ext}", ci, rng, "rgba" if "png" in ext.lower() else "rgb")
        R.litter(root / c)
        (root / c / ".hidden_dir").mkdir()
        R.write(root / c / ".hidden_dir" / "x.jpg", ci, rng)
    R.litter(root)
    table = from_path(root)
    assert table.classes == ["cat", "dog"] and len(table.refs) == 10
    zipped = from_path(R.make_zip(root, tmp_path / "pets.zip"))
    assert zipped.classes == ["cat", "dog"] and len(zipped.refs) == 10


def test_empty_class_folder_warns(tmp_path):
    root = _folders(tmp_path / "pets", n=2)
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("to do")
    with pytest.warns(UserWarning, match=r"class folder\(s\) without images.*'emu'"):
        table = from_path(root)
    assert table.classes == ["cat", "dog"]
    with pytest.warns(UserWarning, match="emu"):
        from_path(R.make_zip(root, tmp_path / "pets.zip"))


def test_single_class_is_an_error(tmp_path):
    root = _folders(tmp_path / "pets", classes=("cat",), n=4)
    with pytest.raises(DataError, match=r"only one class \('cat'\) with 4 images"):
        easycls.fit(str(root), **TINY)


def test_zero_images_says_what_was_found(tmp_path):
    root = tmp_path / "docs"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        (root / "a" / f"{i}.txt").write_text("x")
    (root / "a" / "scan.pdf").write_bytes(b"%PDF")
    R.litter(root)
    with pytest.raises(DataError, match=r"no images in .*docs: found \d+ file\(s\) \(\.txt x3"):
        easycls.fit(str(root), **TINY)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match="an empty folder"):
        from_path(root / "empty")


def test_all_images_unreadable_in_a_class_is_an_error(tmp_path):
    root = _folders(tmp_path / "pets", n=4)
    rng = np.random.default_rng(1)
    for i in range(4):
        R.write(root / "emu" / f"{i}.jpg", 2, rng, "zero")
    with pytest.raises(DataError, match="emu"):
        easycls.fit(str(root), **TINY)


def test_classes_matched_by_name_not_order(tmp_path):
    root = tmp_path / "split"
    _folders(root / "train", classes=("cat", "dog"), n=4)
    # other order on disk: same classes
    _folders(root / "valid", classes=("dog", "cat"), n=2, seed=1)
    table = from_path(root)
    train = [lab for lab, v in zip(table.labels, table.is_valid) if not v]
    valid = [lab for lab, v in zip(table.labels, table.is_valid) if v]
    assert all(ref.split("/")[-2] == lab[0] for ref, lab in zip(table.refs, table.labels))
    assert sorted({x[0] for x in train}) == sorted({x[0] for x in valid}) == ["cat", "dog"]


def test_class_only_in_validation_is_named(tmp_path):
    root = tmp_path / "split"
    _folders(root / "train", classes=("cat", "dog"), n=4)
    _folders(root / "val", classes=("cat", "dog", "emu"), n=2, seed=1)
    with pytest.raises(DataError, match=r"\['emu'\] appear only in the validation split"):
        easycls.fit(str(root), **TINY)


def test_two_validation_folders_are_ambiguous(tmp_path):
    root = tmp_path / "split"
    _folders(root / "train", n=2)
    _folders(root / "val", n=1)
    _folders(root / "validation", n=1)
    with pytest.raises(DataError, match=r"several valid folders.*\['val', 'validation'\]"):
        from_path(root)


def test_loose_images_beside_class_folders_are_an_error(tmp_path):
    root = _folders(tmp_path / "pets", n=2)
    R.write(root / "stray.jpg", 0, np.random.default_rng(0))
    with pytest.raises(DataError, match=r"1 image\(s\) directly in .*'stray.jpg'.*one sub-folder "
                                        r"per class"):
        from_path(root)


def _csv(tmp_path, names):
    images = _folders(tmp_path / "images", n=3)
    rows = [f"{c}/{c}_{i}.jpg,{c}" for c in ("cat", "dog") for i in range(3)] + [
        f"{n},cat" for n in names
    ]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    return tmp_path / "labels.csv", images


def test_csv_rows_with_missing_files_are_listed(tmp_path):
    csv, images = _csv(tmp_path, [f"gone_{i}.jpg" for i in range(8)])
    with pytest.raises(DataError) as e:
        easycls.fit(str(csv), images=str(images), **TINY)
    msg = str(e.value)
    assert "8 of 14 images listed in labels.csv are missing" in msg
    assert (
        "line 8: 'gone_0.jpg'" in msg
        and "gone_4.jpg" in msg
        and "gone_5.jpg" not in msg
        and "..." in msg
    )


@pytest.mark.parametrize(
    "bad", ["../secret.jpg", "/etc/passwd", "cat/../../x.jpg", "C:\\Windows\\x.jpg"]
)
def test_csv_paths_escaping_the_image_folder_are_rejected(bad, tmp_path):
    csv, images = _csv(tmp_path, [bad])
    with pytest.raises(DataError, match=r"1 path\(s\) in labels.csv leave the image folder"):
        easycls.fit(str(csv), images=str(images), **TINY)


def test_unknown_path_suggests_recipes(tmp_path):
    with pytest.raises(DataError, match=r"'data/digit.zip' is neither an existing file or "
                                        r"folder.*'digits'"):
        easycls.fit("data/digit.zip", **TINY)
    with pytest.raises(DataError, match=r"unknown dataset 'tinyimagenet'; did you mean "
                                        r"'tiny-imagenet'"):
        easycls.fit("tinyimagenet", **TINY)


def test_damaged_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "pets.zip"
    bad.write_bytes(b"PK\3\4 this is not really a zip")
    with pytest.raises(DataError, match="not a readable zip archive"):
        easycls.fit(str(bad), **TINY)


def test_unreadable_zip_member_is_skipped(tmp_path):
    root = _folders(tmp_path / "pets", n=5, kinds=("truncated",))
    archive = R.make_zip(root, tmp_path / "pets.zip")
    assert zipfile.is_zipfile(archive)
    easycls.fit(str(archive), out=str(tmp_path / "run"), **TINY)
    lines = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(lines) == 2 and all(
        "pets.zip!/" in ln and ln.endswith("\ttruncated") for ln in lines
    )
