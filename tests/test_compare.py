"""`easycls compare`: runs side by side, from nothing but their run directories."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import write_class_folders
from typer.testing import CliRunner

from easycls.cli import app
from easycls.compare import NoRuns, NotARun, compare_runs, read_run, run_dirs

runner = CliRunner()
DIGITS = [str(i) for i in range(10)]


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_run(root: Path, name: str, *, arch: str = "resnet18", accuracy: float = 0.9,
              per_epoch=(0.5, 0.9), classes=DIGITS, n_valid: int = 360, source: str = "digits",
              **metrics) -> Path:
    """A finished run directory in the layout `fit` writes (see docs/architecture.md)."""
    run = root / name
    run.mkdir(parents=True)
    m = dict(accuracy=accuracy, valid_loss=1 - accuracy, n_valid=n_valid, top5_accuracy=1.0,
             train_seconds=10.5, total_seconds=12.25, lr_choice="given", lr_search_seconds=0.0,
             processes=1, device="cpu", images_per_s=137.5, **metrics)
    (run / "metrics.json").write_text(json.dumps(m))
    (run / "config.json").write_text(json.dumps(dict(source=source, arch=arch, epochs=2, lr=3e-3,
                                                     bs=64, size=32, pretrained=False)))
    (run / "model.json").write_text(json.dumps(dict(arch=arch, classes=list(classes))))
    rows = [f"{i},1.0,{1 - a},{a},1.0,1.5\r\n" for i, a in enumerate(per_epoch)]
    (run / "history.csv").write_text(
        "epoch,train_loss,valid_loss,accuracy,top5_accuracy,seconds\r\n" + "".join(rows))
    return run


def test_table_values_folding_and_rank(tmp_path):
    runs = [write_run(tmp_path, "a", arch="resnet18", accuracy=0.91, per_epoch=(0.8, 0.95, 0.91)),
            write_run(tmp_path, "b", arch="resnet34", accuracy=0.97),
            write_run(tmp_path, "c", arch="mobilenetv3_small_100", accuracy=0.88)]
    table = compare_runs(runs, out=tmp_path / "cmp")
    assert [r["rank"] for r in table.rows] == [2, 1, 3]
    assert table.ranked_by == "accuracy"
    assert [r["epochs"] for r in table.rows] == [3, 2, 2]
    assert [r["best_epoch"] for r in table.rows] == [2, 2, 2]  # a: 0.95 at its second epoch
    # equal in every run: one header line, not columns
    assert table.common["data"] == "digits" and table.common["device"] == "cpu"
    assert "arch" in table.columns and "device" not in table.columns
    assert "same in every run: data digits, size 32, bs 64" in table.text()
    rows = _csv(tmp_path / "cmp" / "compare.csv")  # the CSV keeps every column
    assert [float(r["accuracy"]) for r in rows] == [0.91, 0.97, 0.88]
    assert rows[0]["device"] == "cpu" and rows[1]["arch"] == "resnet34"
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| b | resnet34 | 2 |" in md and "Ranked by accuracy" in md
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_equal_scores_share_a_rank(tmp_path):
    runs = [write_run(tmp_path, n, accuracy=a) for n, a in (("a", 0.9), ("b", 1.0), ("c", 1.0))]
    assert [r["rank"] for r in compare_runs(runs).rows] == [3, 1, 1]


def test_different_datasets_are_not_ranked(tmp_path):
    runs = [write_run(tmp_path, "digits-a"), write_run(tmp_path, "digits-b", accuracy=0.8),
            write_run(tmp_path, "pets", classes=["cat", "dog"], n_valid=12, source="/data/pets")]
    table = compare_runs(runs)
    assert table.ranked_by is None and all("rank" not in r for r in table.rows)
    assert "Not ranked: the runs are on 2 different datasets" in table.note
    assert "digits (10 classes, 360 validation images); pets (2 classes" in table.note


def test_the_same_data_copied_from_another_machine_is_ranked(tmp_path):
    runs = [write_run(tmp_path, "a", source="/home/me/data/asl"),
            write_run(tmp_path, "b", source="/scratch/asl", accuracy=0.95)]
    assert compare_runs(runs).ranked_by == "accuracy"


def test_multi_label_runs_rank_by_their_tuned_f1(tmp_path):
    runs = []
    for name, f1 in (("x", 0.6), ("y", 0.7)):
        run = write_run(tmp_path, name)
        m = json.loads((run / "metrics.json").read_text())
        m = {k: v for k, v in m.items() if k not in ("accuracy", "top5_accuracy")}
        m.update(f1_micro=f1, f1_samples=f1 - 0.1, thresholds=dict(average="micro"))
        (run / "metrics.json").write_text(json.dumps(m))
        runs.append(run)
    table = compare_runs(runs)
    assert table.ranked_by == "f1_micro" and [r["rank"] for r in table.rows] == [2, 1]
    assert "f1_micro" in table.columns and "f1_samples" not in table.columns


@pytest.mark.parametrize("make, says", [
    (lambda d: None, "no such folder"),
    (lambda d: d.mkdir(), "not a run directory (no metrics.json)"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "an unfinished run"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}"),
                (d / "checkpoint.pth").write_bytes(b"x")), "easycls fit --resume"),
    (lambda d: (d.mkdir(), (d / "metrics.json").write_text("{")), "not valid JSON"),
])
def test_a_folder_that_is_not_a_run_gets_one_line(tmp_path, make, says):
    bad = tmp_path / "bad"
    make(bad)
    with pytest.raises(NotARun, match=re.escape(says)):
        read_run(bad)
    table = compare_runs([write_run(tmp_path, "good"), bad])
    assert len(table.rows) == 1 and len(table.skipped) == 1 and says in table.skipped[0]
    assert f"left out: {bad}" in table.text()


def test_a_folder_of_runs_means_its_runs(tmp_path):
    write_run(tmp_path / "runs", "p1")
    write_run(tmp_path / "runs", "p2")
    (tmp_path / "runs" / "notes").mkdir()
    assert [p.name for p in run_dirs([tmp_path / "runs"])] == ["p1", "p2"]
    single = write_run(tmp_path, "one")
    assert run_dirs([single]) == [single]


def test_runs_with_the_same_name_are_told_apart(tmp_path):
    runs = [write_run(tmp_path / "machine1", "asl"), write_run(tmp_path / "machine2", "asl")]
    assert [r["run"] for r in compare_runs(runs).rows] == ["machine1/asl", "machine2/asl"]


def test_cli_compare_and_nothing_to_compare(tmp_path):
    runs = [str(write_run(tmp_path, n, arch=n)) for n in ("resnet18", "resnet34")]
    res = runner.invoke(app, ["compare", *runs, str(tmp_path / "missing"),
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "2 runs compared" in res.output and "missing: no such folder" in res.output
    assert (tmp_path / "out" / "compare.md").exists()
    with pytest.raises(NoRuns):
        compare_runs([tmp_path / "missing"])
    res = runner.invoke(app, ["compare", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "nothing to compare" in res.output


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> list[Path]:
    """Three real tiny runs of the same generated data: two archs, one and two epochs."""
    from easycls import fit
    root = tmp_path_factory.mktemp("compare")
    data = write_class_folders(root / "pets")
    runs = []
    for name, arch, epochs in (("resnet-1", "test_resnet", 1), ("resnet-2", "test_resnet", 2),
                               ("effnet-1", "test_efficientnet", 1)):
        fit(str(data), arch=arch, epochs=epochs, size=16, bs=8, lr=3e-3, pretrained=False,
            quiet=True, out=str(root / "runs" / name))
        runs.append(root / "runs" / name)
    return runs


@pytest.mark.slow
def test_compare_real_runs_equals_their_metrics(three_runs, tmp_path):
    broken = three_runs[0].parent / "crashed"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{}")
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(three_runs[0].parent), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.count("left out:") == 1 and "crashed: an unfinished run" in res.output
    rows = {r["run"]: r for r in _csv(out / "compare.csv")}
    assert sorted(rows) == sorted(p.name for p in three_runs)
    for run in three_runs:
        m = json.loads((run / "metrics.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        row = rows[run.name]
        for column, key in (("accuracy", "accuracy"), ("valid_loss", "valid_loss"),
                            ("train_s", "train_seconds"), ("total_s", "total_seconds"),
                            ("images_per_s", "images_per_s"), ("processes", "processes")):
            assert float(row[column]) == m[key], (run.name, column)
        assert row["arch"] == cfg["arch"] and float(row["lr"]) == cfg["lr"]
        history = _csv(run / "history.csv")
        assert int(row["epochs"]) == len(history) == cfg["epochs"]
        # images/s: the images trained (whole batches of the training split) per second
        n_train, epochs = 36 - m["n_valid"], cfg["epochs"]
        images = m["images_per_s"] * m["train_seconds"]
        assert (n_train - 8) * epochs * 0.99 <= images <= n_train * epochs * 1.01
    assert (out / "compare.png").stat().st_size > 10_000
    assert "Ranked by accuracy" in (out / "compare.md").read_text()


@pytest.mark.slow
def test_compare_refuses_to_rank_real_runs_of_two_datasets(three_runs, digits_run):
    table = compare_runs([*three_runs, digits_run])
    assert table.ranked_by is None and "2 different datasets" in table.note
    m = json.loads((digits_run / "metrics.json").read_text())
    assert table.rows[-1]["accuracy"] == m["accuracy"]
