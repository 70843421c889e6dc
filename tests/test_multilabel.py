"""Multi-label end to end: the course CSV shape, tuned thresholds in the bundle, predict, retune."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import TINY, label_mosaic
from PIL import Image
from typer.testing import CliRunner

import easycls
from easycls.cli import app

LABELS = ["1", "2", "3", "19"]  # names kept as given; note no "4".."18"


def _mosaic(labels: list[str], rng) -> Image.Image:
    """Quadrant k lit in colour k when label k is present: learnable multi-label images."""
    return label_mosaic(labels, LABELS, rng)


@pytest.fixture(scope="module")
def course_data(tmp_path_factory):
    """`train.csv` like the competition's: ImageID,Labels,Caption with unquoted commas and
    quotes."""
    root = tmp_path_factory.mktemp("comp")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    lines = ["ImageID,Labels,Caption"]
    for i in range(80):
        labels = sorted(
            rng.choice(LABELS, size=rng.integers(1, 4), replace=False).tolist(), key=int
        )
        _mosaic(labels, rng).save(root / "data" / f"{i}.jpg", quality=95)
        lines.append(f'{i}.jpg,{" ".join(labels)},A "man", riding a horse, on a beach {i}')
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


PASSES = []  # the prediction passes `fit` ran after training


@pytest.fixture(scope="module")
def ml_run(course_data, tmp_path_factory):
    from fastai.learner import Learner
    out = tmp_path_factory.mktemp("runs") / "ml"
    get_preds = Learner.get_preds
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Learner, "get_preds", lambda *a, **k: PASSES.append(k) or get_preds(*a, **k))
        learn = easycls.fit(
            str(course_data / "train.csv"),
            images=str(course_data / "data"),
            out=str(out),
            **{**TINY, "epochs": 3, "lr": 3e-3},
        )
    return learn, out


def test_final_scores_and_thresholds_come_from_the_last_epochs_validation(ml_run):
    from easycls.metrics import multi_label_metrics
    learn, out = ml_run
    assert PASSES == []  # no pass of its own for the thresholds: the last epoch's is used
    metrics = json.loads((out / "metrics.json").read_text())
    # the returned Learner scored afresh tunes the same thresholds to the same scores
    probs, targets = learn.get_preds(ds_idx=1, act=torch.sigmoid)
    fresh = multi_label_metrics(probs, targets)
    assert metrics["thresholds"]["per_class"] == pytest.approx(fresh["thresholds"]["per_class"])
    for key in ("f1_samples", "f1_micro", "valid_loss"):
        assert metrics[key] == pytest.approx(fresh[key], rel=1e-4)


def test_course_csv_trains_multilabel_with_given_label_names(ml_run):
    learn, out = ml_run
    meta = json.loads((out / "model.json").read_text())
    assert meta["multi_label"] is True and meta["classes"] == LABELS
    th = meta["thresholds"]
    assert len(th["per_class"]) == 4 and 0 <= th["global"] <= 1


def test_metrics_contract_and_tuned_not_worse(ml_run):
    _, out = ml_run
    m = json.loads((out / "metrics.json").read_text())
    keys = {"f1_samples", "f1_micro", "f1_macro", "precision_micro", "recall_micro"}
    assert keys <= set(m) and keys <= set(m["at_0.5"]) and "thresholds" in m
    assert m["f1_samples"] >= m["at_0.5"]["f1_samples"] - 1e-12
    assert (out / "f1_threshold.png").stat().st_size > 1000
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == LABELS and all(0 <= float(r["f1"]) <= 1 for r in rows)


def test_predict_applies_stored_thresholds_and_override(ml_run, course_data):
    _, out = ml_run
    p = easycls.load(out, device="cpu")
    img = str(course_data / "data" / "0.jpg")
    labels, probs = p.predict(img)
    expected = [
        c for c, pr, t in zip(p.classes, p.probabilities([img])[0], p.thresholds()) if pr >= t
    ]
    assert labels == expected
    assert p.predict(img, threshold=0.0)[0] == LABELS  # everything passes a 0 threshold
    assert p.predict(img, threshold=1.01)[0] == []


def test_retune_command_updates_bundle(ml_run, course_data, tmp_path):
    import shutil
    _, out = ml_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = CliRunner().invoke(app, ["thresholds", str(copy), str(course_data / "train.csv"),
                                      "--images", str(course_data / "data"), "--average", "micro"])
    assert result.exit_code == 0, result.output
    meta = json.loads((copy / "model.json").read_text())
    assert (
        meta["thresholds"]["average"] == "micro" and meta["thresholds"]["tuned_on"]["images"] == 80
    )
    assert meta["thresholds"]["f1"]["tuned"] >= meta["thresholds"]["f1"]["at_0.5"] - 1e-12


def test_force_single_label_is_refused_for_multi_label_rows(course_data, tmp_path):
    from easycls.data.sources import DataError
    with pytest.raises((DataError, ValueError), match="label"):
        easycls.fit(
            str(course_data / "train.csv"),
            images=str(course_data / "data"),
            multi_label=False,
            out=str(tmp_path / "r"),
            **TINY,
        )


@pytest.mark.slow
def test_digits_multilabel_reaches_090(tmp_path):
    learn = easycls.fit("digits-multilabel", out=str(tmp_path / "ml"), quiet=True)
    m = learn.easycls.metrics
    assert m["f1_samples"] >= 0.9 and m["f1_samples"] >= m["at_0.5"]["f1_samples"]
