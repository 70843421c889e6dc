"""Named recipes end to end on miniature replicas of their real layouts, extracted and zipped."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import replicas as R
from conftest import TINY

import easycls
from easycls.config import TrainConfig
from easycls.data.prepare import load_items
from easycls.data.recipes import RECIPES, dataset_table, get_recipe, locate
from easycls.data.sources import DataError


def _build(name: str, base: Path) -> Path:
    """The folder a user has after extracting the download (what `path=` may point at)."""
    if name == "asl":
        return R.asl(base / "asl")
    if name == "animals15":
        return R.animals15(base / "animals")
    if name == "tiny-imagenet":
        return R.tiny_imagenet(base / "ti")
    if name == "imagenet":
        return R.imagenet_kaggle(base / "imagenet-object-localization-challenge")
    if name == "imagenet-folders":
        return R.imagenet_folders(base / "ILSVRC2012")
    return R.comp5329(base / "comp")


# name -> (classes, n_valid given by the data or None for a random split, n_test, truncated file
# name)
EXPECTED = {
    "asl": (R.ASL_CLASSES, None, 3, "A1.jpg"),
    "animals15": (R.ANIMALS, 6, 6, "Dog-Train (1).jpeg"),
    "tiny-imagenet": (R.WNIDS, 6, 4, "n02124075_0.JPEG"),
    "imagenet": (R.WNIDS, 6, 0, "n01443537_0.JPEG"),
    "imagenet-folders": (R.WNIDS, 6, 0, "n01629819_0.JPEG"),
    "comp5329": (["1", "2", "3"], None, 4, "0.jpg"),
}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each replica as an extracted folder and as the Kaggle zip."""
    base = tmp_path_factory.mktemp("downloads")
    out = {}
    for name in EXPECTED:
        folder = _build(name, base / "extracted")
        out[name] = (folder, R.make_zip(folder, base / f"{name}.zip"))
    return out


def _check_run(name: str, out: Path, learn) -> None:
    classes, n_valid, n_test, truncated = EXPECTED[name]
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == classes
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].split("\t")[0].endswith("/" + truncated)
    assert skipped[0].split("\t")[1] == "truncated"
    metrics = json.loads((out / "metrics.json").read_text())
    if n_valid is not None:  # the given validation split is used as is
        assert len(learn.dls.valid.dataset) == n_valid
    if name == "comp5329":
        assert meta["multi_label"] and "f1_samples" in metrics
        rows = list(csv.DictReader((out / "submission.csv").open()))
        assert [r["ImageID"] for r in rows] == [f"{15 + k}.jpg" for k in range(4)]  # test.csv order
        # each row holds the saved model's own decision for that test image
        refs = load_items(TrainConfig.from_json(out / "config.json")).test_refs
        decided = easycls.load(out, device="cpu").predict_many(refs)
        assert [r["Labels"] for r in rows] == [" ".join(labels) for labels, _ in decided]
    elif n_test:
        rows = list(csv.DictReader((out / "test_predictions.csv").open()))
        assert len(rows) == n_test and {r["label"] for r in rows} <= set(classes)
    if name in ("asl", "animals15"):
        scored = json.loads((out / "test_metrics.json").read_text())
        assert scored["n_test"] == n_test
        # the saved model's own decisions on the labelled test images, against their labels
        table = load_items(TrainConfig.from_json(out / "config.json"))
        labelled = [i for i, labs in enumerate(table.test_labels) if labs]
        decided = easycls.load(out, device="cpu").predict_many(
            [table.test_refs[i] for i in labelled])
        hits = [label == table.test_labels[i][0] for i, (label, _) in zip(labelled, decided)]
        assert scored["test_accuracy"] == pytest.approx(sum(hits) / len(hits))
    if name in ("tiny-imagenet", "imagenet"):
        names = json.loads((out / "class_names.json").read_text())
        assert names["n01443537"] == "goldfish" and names["n02124075"] == "Egyptian cat"


def _fit(name: str, path: Path, out: Path):
    recipe = "imagenet" if name == "imagenet-folders" else name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn = easycls.fit(recipe, path=str(path), out=str(out), **TINY)
    # OS litter (__MACOSX/, .DS_Store) must not look like an empty class folder.
    assert not [w for w in caught if "class folder" in str(w.message)]
    return learn


@pytest.mark.parametrize("name", list(EXPECTED))
def test_recipe_from_extracted_folder(name, downloads, tmp_path):
    learn = _fit(name, downloads[name][0], tmp_path / "run")
    _check_run(name, tmp_path / "run", learn)


@pytest.mark.parametrize("name", ["asl", "comp5329"])
def test_fit_decodes_each_test_image_once(name, downloads, tmp_path, monkeypatch):
    """test_predictions.csv, the test score and the submission share one pass."""
    from collections import Counter

    from easycls import bundle
    decoded, real = Counter(), bundle.to_pixels  # the predictor's one image-to-pixels step
    monkeypatch.setattr(bundle, "to_pixels",
                        lambda ref, size: decoded.update([ref]) or real(ref, size))
    _fit(name, downloads[name][0], tmp_path / "run")
    test_refs = load_items(TrainConfig.from_json(tmp_path / "run" / "config.json")).test_refs
    assert test_refs and decoded == Counter(test_refs)  # every test image, once


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPECTED))
def test_recipe_from_kaggle_zip(name, downloads, tmp_path):
    learn = _fit(name, downloads[name][1], tmp_path / "run")
    _check_run(name, tmp_path / "run", learn)


@pytest.mark.parametrize("name", ["asl", "animals15", "tiny-imagenet", "imagenet", "comp5329"])
def test_zip_reads_same_items_as_folder(name, downloads):
    """Cheap check of every zip without training: same classes, splits and tests as the folder."""
    cfg = TrainConfig(source=name)
    folder = RECIPES[name].load(cfg.updated(path=str(downloads[name][0])))
    zipped = RECIPES[name].load(cfg.updated(path=str(downloads[name][1])))
    assert zipped.classes == folder.classes and zipped.is_valid == folder.is_valid
    assert len(zipped.refs) == len(folder.refs) and len(zipped.test_refs) == len(folder.test_refs)
    assert all("!/" in r for r in zipped.refs)
    assert zipped.class_names == folder.class_names and zipped.test_ids == folder.test_ids


# --- where the data is looked for ---------------------------------------------------------

def test_found_under_easycls_data(downloads, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "tiny-imagenet").mkdir(parents=True)
    (data / "tiny-imagenet" / "tiny-imagenet-200").symlink_to(downloads["tiny-imagenet"][0])
    (data / "animals15.zip").symlink_to(downloads["animals15"][1])
    monkeypatch.setenv("EASYCLS_DATA", str(data))
    assert locate(get_recipe("tiny-imagenet")).where().endswith("tiny-imagenet-200")
    assert locate(get_recipe("animals15")).is_zip


@pytest.mark.parametrize("where", ["root", "parent", "inside", "zip", "folder_with_zip"])
def test_path_accepts_root_parent_inner_folder_and_zip(where, downloads, tmp_path):
    folder, zipped = downloads["asl"]
    given = {"root": folder, "parent": folder.parent, "zip": zipped,
             "inside": folder / "asl_alphabet_train" / "asl_alphabet_train",
             "folder_with_zip": zipped.parent}[where]
    tree = locate(get_recipe("asl"), given)
    assert tree.exists("asl_alphabet_train") and tree.exists("asl_alphabet_test")
    table = get_recipe("asl").load(TrainConfig(source="asl", path=str(given)))
    assert table.classes == R.ASL_CLASSES and len(table.test_refs) == 3


def test_not_found_lists_places_and_download(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as e:
        easycls.fit("tiny-imagenet", **TINY)
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "tiny-imagenet") in msg and "data/tiny-imagenet" in msg
    assert "kaggle datasets download -d akash2sharma/tiny-imagenet" in msg


def test_explicit_path_without_the_layout(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match=r"does not contain the animals15 layout.*Training Data"):
        easycls.fit("animals15", path=str(tmp_path / "junk"), **TINY)
    with pytest.raises(DataError, match="does not exist"):
        easycls.fit("animals15", path=str(tmp_path / "missing.zip"), **TINY)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("asll", "'asl'"),
        ("tiny_imagenet", "'tiny-imagenet'"),
        ("Animals15", "'animals15'"),
        ("./data/animal15.zip", "'animals15'"),
    ],
)
def test_unknown_name_suggests_closest(name, hint):
    with pytest.raises(DataError) as e:
        easycls.fit(name, **TINY)
    assert f"did you mean {hint}" in str(e.value) or hint in str(e.value).split("Known")[0]
    assert "Known datasets" in str(e.value)


def test_dataset_table_and_cli(downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_DATA", str(tmp_path))
    (tmp_path / "comp5329").symlink_to(downloads["comp5329"][0].parent)
    rows = {r["name"]: r for r in dataset_table()}
    assert set(rows) == set(RECIPES)
    assert rows["comp5329"]["where"].endswith("COMP5329S1A2Dataset")
    assert rows["comp5329"]["found"] == "yes" and rows["digits"]["found"] == "embedded"
    assert rows["asl"]["found"] == "no" and "grassknoted/asl-alphabet" in rows["asl"]["download"]
    from typer.testing import CliRunner

    from easycls.cli import app
    res = CliRunner().invoke(app, ["datasets"])
    assert res.exit_code == 0, res.output
    assert (
        "comp5329" in res.output
        and "COMP5329S1A2Dataset" in res.output
        and "tiny-imagenet" in res.output
    )


@pytest.mark.parametrize("name", ["animals15", "tiny-imagenet", "comp5329"])
def test_plain_path_holding_a_recipe_layout_uses_it(name, downloads):
    """`fit("archive.zip")` on a known download reads its real splits, not `Training Data/` as a
    class."""
    from easycls.data.prepare import read_path
    expected = get_recipe(name).load(TrainConfig(source=name, path=str(downloads[name][0])))
    for given in downloads[name]:
        table = read_path(given)
        assert table.classes == expected.classes and table.is_valid == expected.is_valid
        assert len(table.test_refs) == len(expected.test_refs)


def test_plain_split_folders_are_not_taken_for_imagenet(tmp_path):
    from easycls.data.recipes import detect
    R.imagenet_folders(tmp_path / "plain")
    assert detect(tmp_path / "plain") is None


def test_path_may_be_a_file_of_the_dataset(downloads):
    tree = locate(get_recipe("comp5329"), downloads["comp5329"][0] / "train.csv")
    assert tree.exists("test.csv") and tree.exists("data")


def test_cli_fit_recipe_not_found_exits_with_the_message(tmp_path):
    from typer.testing import CliRunner

    from easycls.cli import app

    res = CliRunner().invoke(
        app, ["fit", "asl", "--path", str(tmp_path / "nope"), "--no-pretrained"]
    )
    assert res.exit_code == 2
    assert "does not exist" in res.output and "grassknoted/asl-alphabet" in res.output
