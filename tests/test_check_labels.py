"""Likely label errors: out-of-fold folds, cleanlab's ranking, and `check --labels`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from easycls.check import check
from easycls.check.labels import _folds, linear_out_of_fold, rank_label_issues
from easycls.check.planted import planted_folder
from easycls.cli import app


def test_folds_are_stratified_and_skip_classes_too_small_to_hold_out():
    labels = ["a"] * 8 + ["b"] * 6 + ["c"] * 2
    fold = _folds(labels, 4, seed=0)
    assert (fold[-2:] == -1).all()
    for cls, n in (("a", 8), ("b", 6)):
        got = np.bincount([f for f, lab in zip(fold, labels) if lab == cls], minlength=4)
        assert got.sum() == n and got.max() - got.min() <= 1
    assert (_folds(labels, 4, seed=0) == fold).all()


def test_rank_puts_confidently_contradicted_labels_first():
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "fox"]
    given = [classes[i % 3] for i in range(90)]
    probs = np.full((90, 3), 0.05)
    probs[np.arange(90), np.arange(90) % 3] = 0.9
    probs += rng.uniform(0, 0.02, probs.shape)
    wrong = {4: 2, 40: 0, 77: 1}  # index -> the class the image really shows
    for i, true in wrong.items():
        probs[i] = 0.05
        probs[i, true] = 0.9 - 0.1 * (i == 77)
    probs /= probs.sum(1, keepdims=True)
    refs = [f"img{i}.png" for i in range(90)]
    issues = rank_label_issues(probs, given, classes, refs)
    assert [x["path"] for x in issues] == ["img4.png", "img40.png", "img77.png"]
    assert [x["suggested"] for x in issues] == ["fox", "cat", "dog"]
    assert issues[0]["given"] == "dog" and issues[0]["score"] >= issues[-1]["score"] > 0.5


def test_linear_out_of_fold_finds_the_planted_wrong_labels(tmp_path):
    planted = planted_folder(tmp_path / "d", n_classes=4, per_class=40, dup_frac=0,
                             wrong_frac=0.05, size=32, seed=3)
    r = check(str(tmp_path / "d"), out=tmp_path / "o", labels=True, say=lambda s: None)
    assert r["label_source"].startswith("out-of-fold, linear")
    wrong = {w["path"] for w in planted["wrong_labels"]}
    top = {str(Path(x["path"]).relative_to(tmp_path / "d").as_posix())
           for x in r["label_issues"][:2 * len(wrong)]}
    assert len(wrong) == 8 and len(wrong & top) >= 6
    truth = {w["path"]: w["true"] for w in planted["wrong_labels"]}
    hits = [x for x in r["label_issues"] if Path(x["path"]).relative_to(tmp_path / "d")
            .as_posix() in truth]
    assert sum(x["suggested"] == truth[Path(x["path"]).relative_to(tmp_path / "d").as_posix()]
               for x in hits) >= len(hits) - 1


def test_linear_out_of_fold_never_predicts_an_image_it_trained_on():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    labels = ["a", "b"] * 20
    x[7] = x[9] = 100.0  # two identical extreme images, labelled a and b
    probs, ranked = linear_out_of_fold(x, labels, ["a", "b"], folds=4, seed=0)
    assert ranked.all() and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    seen = linear_out_of_fold(np.concatenate([x, x]), labels * 2, ["a", "b"], folds=4)[0]
    assert not np.allclose(probs, seen[:40])  # copies in other folds change the answer


@pytest.mark.slow
def test_check_labels_ranks_out_of_fold_issues_and_a_run_model_ranks_too(tmp_path):
    planted_folder(tmp_path / "d", n_classes=3, per_class=24, dup_frac=0, wrong_frac=0.05,
                   size=32, seed=2)
    r = check(str(tmp_path / "d"), out=tmp_path / "o", labels=True, label_model="cnn",
              label_seconds=40, say=lambda s: None)
    assert r["label_source"] == "out-of-fold, small CNN" and r["label_issues"]
    scores = [x["score"] for x in r["label_issues"]]
    assert scores == sorted(scores, reverse=True)
    assert {x["given"] for x in r["label_issues"]} <= {"class0", "class1", "class2"}
    assert all(x["given"] != x["suggested"] for x in r["label_issues"][:3])
    md = (tmp_path / "o" / "check.md").read_text()
    assert "## label issues: WARN" in md and "looks like" in md
    result = CliRunner().invoke(app, ["check", str(tmp_path / "d"), "--labels",
                                      "--label-budget", "soon"])
    assert result.exit_code == 2 and "--label-budget" in result.output
    result = CliRunner().invoke(app, ["check", str(tmp_path / "d"), "--labels",
                                      "--label-model", "forest"])
    assert result.exit_code == 2 and "--label-model" in result.output


@pytest.mark.slow
def test_a_run_directory_ranks_its_data_with_its_model(digits_run, digits_folder, tmp_path):
    r = check(str(digits_run), out=tmp_path / "o", say=lambda s: None)
    # the run was trained on the digits folder, so that folder is what gets checked
    assert r["source"] == str(digits_folder) and r["label_source"].startswith("the model of")
    classes = {str(d) for d in range(10)}
    assert r["label_issues"] and all(x["given"] in classes and x["suggested"] in classes
                                     for x in r["label_issues"])
