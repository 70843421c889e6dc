"""`easycls evaluate` and submissions, on real runs of the embedded datasets and tiny generated
data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import color_image
from PIL import Image
from typer.testing import CliRunner

from easycls import fit, load
from easycls.cli import app
from easycls.evaluate import evaluate, most_confused
from easycls.metrics import confusion_matrix
from easycls.predict import submission_columns, write_submission
from easycls.report import plot_confusion, top_confused_classes

runner = CliRunner()
DIGITS_VALID = 360  # the fixed stratified 20% split of scikit-learn's 1797 digits


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A real (tiny) run on the embedded digits data: one epoch of timm's smallest resnet at 16
    px."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    fit("digits", arch="test_resnet", epochs=1, size=16, bs=64, lr=3e-3, out=str(out), quiet=True)
    return out


@pytest.fixture(scope="module")
def digits_eval(digits_run):
    return evaluate(digits_run, quiet=True)


def test_single_label_report_files(digits_run, digits_eval):
    out = digits_run / "eval-digits"
    assert digits_eval.out_dir == out
    assert (digits_run / "confusion_matrix.png").exists()  # fit writes one with the run
    for name in ("metrics.json", "per_class.csv", "predictions.csv", "confusion_matrix.csv",
                 "confusion_matrix.png", "most_confused.csv", "top_losses.png"):
        assert (out / name).stat().st_size > 0, name


def test_per_class_support_sums_to_the_validation_split(digits_run, digits_eval):
    rows = _rows(digits_run / "eval-digits" / "per_class.csv")
    assert [r["class"] for r in rows] == [str(d) for d in range(10)]
    assert sum(int(r["support"]) for r in rows) == DIGITS_VALID
    assert sum(int(r["predicted"]) for r in rows) == DIGITS_VALID
    truth = Counter(r["target"] for r in _rows(digits_run / "eval-digits" / "predictions.csv"))
    assert {r["class"]: int(r["support"]) for r in rows} == dict(truth)


def test_confusion_matrix_matches_the_predictions(digits_run, digits_eval):
    out = digits_run / "eval-digits"
    cm = np.loadtxt(out / "confusion_matrix.csv", delimiter=",", skiprows=1, dtype=np.int64)
    header = (out / "confusion_matrix.csv").read_text().splitlines()[0].split(",")
    index = {c: i for i, c in enumerate(header)}
    expected = np.zeros_like(cm)
    for r in _rows(out / "predictions.csv"):
        expected[index[r["target"]], index[r["predicted"]]] += 1
    assert (cm == expected).all()
    assert (cm == digits_eval.confusion).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    # The same model on the same validation images: the run's own accuracy.
    run_acc = json.loads((digits_run / "metrics.json").read_text())["accuracy"]
    assert metrics["accuracy"] == pytest.approx(run_acc, abs=0.02)
    top = _rows(out / "most_confused.csv")
    if top:
        assert int(top[0]["count"]) == (cm - np.diag(np.diag(cm))).max()


def test_precision_recall_follow_the_matrix(digits_eval):
    cm = digits_eval.confusion
    for j, row in enumerate(digits_eval.per_class):
        assert row["recall"] == pytest.approx(cm[j, j] / cm[j].sum())
        if cm[:, j].sum():
            assert row["precision"] == pytest.approx(cm[j, j] / cm[:, j].sum())


def test_cli_evaluate_all_split_of_a_folder(digits_run, tmp_path):
    from easycls.data import builtin
    folder = builtin.materialize("digits") / "valid"  # a plain class-folder tree, no split inside
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(digits_run), str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "most confused" in result.output and "precision" in result.output
    assert sum(int(r["support"]) for r in _rows(out / "per_class.csv")) == DIGITS_VALID


def test_evaluate_records_unreadable_and_unknown(digits_run, tmp_path):
    root = tmp_path / "extra"
    for label in ("3", "7", "cat"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    (root / "3" / "broken.png").write_bytes(b"not a png")
    ev = evaluate(digits_run, root, tmp_path / "r", quiet=True)
    assert len(ev.refs) == 6
    skipped = (tmp_path / "r" / "skipped.txt").read_text()
    assert "broken.png" in skipped and "not among the model's classes" in skipped
    assert sum(r["support"] for r in ev.per_class) == 6


# ------------------------------------------------------------------ multi-label


def _write_multilabel(root: Path, n: int, seed: int, classes=("a", "b", "c", "d")) -> Path:
    """Two-colour images: each half's colour encodes one label; `ImageID,Labels` CSV."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["ImageID,Labels,Caption"]
    for i in range(n):
        picks = sorted(rng.choice(len(classes), size=int(rng.integers(1, 3)), replace=False))
        halves = [np.asarray(color_image(int(c), len(classes), rng, 24)) for c in (picks * 2)[:2]]
        Image.fromarray(np.concatenate([halves[0][:12], halves[1][12:]])).save(
            root / "images" / f"{i}.png"
        )
        lines.append(f"{i}.png,{' '.join(classes[c] for c in picks)},a caption, with commas")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    labels = _write_multilabel(root, 64, seed=0)
    out = root / "run"
    fit(
        str(labels),
        images=str(root / "images"),
        arch="test_resnet",
        pretrained=False,
        epochs=1,
        size=32,
        bs=16,
        lr=1e-3,
        out=str(out),
        quiet=True,
    )
    return labels, out


def test_multi_label_report(multi_run):
    labels, run = multi_run
    ev = evaluate(run, quiet=True)
    out = ev.out_dir
    for name in ("metrics.json", "per_class.csv", "predictions.csv", "f1_vs_threshold.png",
                 "frequency_vs_f1.png"):
        assert (out / name).stat().st_size > 0, name
    rows = _rows(out / "per_class.csv")
    preds = _rows(out / "predictions.csv")
    positives = Counter(lab for r in preds for lab in r["targets"].split())
    assert {r["class"]: int(r["support"]) for r in rows} == {
        c: positives.get(c, 0) for c in ev.classes
    }
    predicted = Counter(lab for r in preds for lab in r["predicted"].split())
    assert {r["class"]: int(r["predicted"]) for r in rows} == {
        c: predicted.get(c, 0) for c in ev.classes
    }
    stored = load(run).thresholds()
    assert [float(r["threshold"]) for r in rows] == pytest.approx(stored.tolist())
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["f1_samples"] <= 1 and "at_0.5" in m and "best_global_threshold_here" in m


@pytest.mark.slow
def test_digits_multilabel_real_run(tmp_path):
    out = tmp_path / "run"
    fit("digits-multilabel", epochs=1, size=24, out=str(out), quiet=True)
    ev = evaluate(out, quiet=True)
    assert len(ev.refs) == 600
    assert (ev.out_dir / "f1_vs_threshold.png").exists()
    run_f1 = json.loads((out / "metrics.json").read_text())["f1_samples"]
    assert ev.metrics["f1_samples"] == pytest.approx(run_f1, abs=0.03)


# ------------------------------------------------------------------ submissions


def test_multilabel_submission_in_order(multi_run, tmp_path):
    labels, run = multi_run
    images = sorted(str(p) for p in (labels.parent / "images").iterdir())
    order = tmp_path / "test.csv"
    order.write_text("ImageID,Caption\n5.png,x, y\n2.png,z\n40,no extension\n")
    out = tmp_path / "submission.csv"
    n, bad = write_submission(load(run), images, out, order=order)
    assert n == 3 and not bad
    rows = _rows(out)
    assert list(rows[0]) == ["ImageID", "Labels"]
    assert [r["ImageID"] for r in rows] == ["5.png", "2.png", "40"]
    classes = set(load(run).classes)
    assert all(set(r["Labels"].split()) <= classes for r in rows)


def test_single_label_submission_cli(digits_run, tmp_path):
    from easycls.data import builtin
    folder = builtin.materialize("digits") / "valid" / "3"
    out = tmp_path / "sub.csv"
    result = runner.invoke(app, ["predict", str(digits_run), str(folder), "--submission", "single",
                                 "--csv", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert list(rows[0]) == ["id", "label"] and len(rows) == len(list(folder.iterdir()))
    assert all(r["label"] in [str(d) for d in range(10)] for r in rows)


def test_submission_errors(digits_run, tmp_path):
    order = tmp_path / "o.csv"
    order.write_text("id\nnope.png\n")
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    with pytest.raises(FileNotFoundError, match="have no image"):
        write_submission(load(digits_run), [str(img)], tmp_path / "s.csv", order=order)
    with pytest.raises(ValueError, match="unknown submission format"):
        submission_columns("a,b,c", False)
    assert submission_columns("auto", True) == ("ImageID", "Labels")


# ------------------------------------------------------------------ pieces


def test_confusion_helpers_and_large_plot(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, n, 4000)
    p = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % n)
    cm = confusion_matrix(y, p, n)
    assert cm.sum() == len(y) and np.trace(cm) == int((y == p).sum())
    pairs = most_confused(cm, [str(i) for i in range(n)])
    assert pairs[0]["count"] == (cm - np.diag(np.diag(cm))).max()
    assert len(top_confused_classes(cm, 20)) <= 20
    png = plot_confusion(cm, [f"class_{i}" for i in range(n)], tmp_path / "cm.png")
    assert png.stat().st_size > 0


def test_run_data_not_found_names_the_fix(digits_run, tmp_path):
    cfg = json.loads((digits_run / "config.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in ("model.json", "model.safetensors"):
        (moved / f).write_bytes((digits_run / f).read_bytes())
    (moved / "config.json").write_text(json.dumps({**cfg, "source": "relative/photos"}))
    result = runner.invoke(app, ["evaluate", str(moved)])
    assert result.exit_code == 2
    assert "not found" in result.output and "easycls evaluate" in result.output
