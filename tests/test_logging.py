"""Run logs end to end: history.csv, --log-json events and --tensorboard event files."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
from conftest import write_class_folders
from typer.testing import CliRunner

from easycls.cli import app

runner = CliRunner()
ARGS = [
    "--arch",
    "resnet18",
    "--no-pretrained",
    "--epochs",
    "2",
    "--size",
    "16",
    "--bs",
    "8",
    "--lr",
    "1e-3",
    "--quiet",
]
has_tensorboard = importlib.util.find_spec("tensorboard") is not None


def test_log_json_matches_history(tmp_path):
    data = write_class_folders(tmp_path / "pets")
    events = tmp_path / "events.jsonl"
    result = runner.invoke(
        app, ["fit", str(data), "--out", str(tmp_path / "run"), "--log-json", str(events), *ARGS]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["fit_start", "epoch", "epoch", "fit_end"]
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [e["epoch"] for e in lines if e["event"] == "epoch"] == [
        int(r["epoch"]) for r in history
    ]
    for e, r in zip([e for e in lines if e["event"] == "epoch"], history):
        assert e["valid_loss"] == pytest.approx(float(r["valid_loss"]))


@pytest.mark.skipif(not has_tensorboard, reason="tensorboard not installed")
def test_tensorboard_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data = write_class_folders(tmp_path / "pets")
    result = runner.invoke(
        app, ["fit", str(data), "--out", str(tmp_path / "run"), "--tensorboard", *ARGS]
    )
    assert result.exit_code == 0, result.output
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train_loss" in tags and "valid_loss" in tags and "accuracy" in tags
    assert len(acc.Scalars("valid_loss")) == 2


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("tensorboard") or name.endswith("callback.tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.delitem(__import__("sys").modules, "fastai.callback.tensorboard", raising=False)
    data = write_class_folders(tmp_path / "pets")
    result = runner.invoke(
        app, ["fit", str(data), "--out", str(tmp_path / "run"), "--tensorboard", *ARGS]
    )
    assert result.exit_code == 2
    assert "pip install tensorboard" in result.output
    assert not (tmp_path / "run" / "history.csv").exists()  # stopped before training


def test_fit_logging_to_a_file_writes_plain_lines(tmp_path):
    """Output that is not a terminal gets one plain line per epoch, not progress bars."""
    import subprocess
    import sys
    data = write_class_folders(tmp_path / "pets")
    log = tmp_path / "fit.log"
    args = [a for a in ARGS if a != "--quiet"]
    with log.open("w") as f:
        res = subprocess.run([sys.executable, "-m", "easycls", "fit", str(data), "--out",
                              str(tmp_path / "run"), *args], stdout=f, stderr=subprocess.PIPE,
                             text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    text = log.read_text()
    assert "\r" not in text and "FutureWarning" not in res.stderr
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "valid_loss" in epochs[0] and "accuracy" in epochs[0]
    assert len(text.encode()) <= 300 * 2 + 400  # a few hundred bytes per epoch, plus start/end
    assert f"run directory: {tmp_path / 'run'}" in text


def test_quiet_fit_ends_with_one_line(tmp_path):
    data = write_class_folders(tmp_path / "pets")
    result = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "run"), *ARGS])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("done: ") and str(tmp_path / "run") in lines[0]


def test_plain_progress_lines_inside_long_epochs(tmp_path):
    import io

    from easycls import fit
    from easycls.runlog import PlainProgress
    data = write_class_folders(tmp_path / "pets")
    learn = fit(str(data), out=str(tmp_path / "run"), arch="resnet18", pretrained=False,
                epochs=1, size=16, bs=8, lr=1e-3, quiet=True)
    learn.logger = print  # as in a run that is not --quiet
    out = io.StringIO()
    ticks = iter(range(0, 10_000, 50))  # a clock that moves 50 s per reading
    learn.fit(1, 1e-3, cbs=PlainProgress(every=60, stream=out, clock=lambda: next(ticks)))
    lines = out.getvalue().splitlines()
    assert any(line.startswith("epoch 1/1: batch ") for line in lines)
    assert lines[-1].startswith("epoch 1/1: train_loss ")


def test_the_decode_counter_writes_plain_lines_to_a_log(capsys):
    """On a log file the image counter is a line every 10 %, not a rewritten line per chunk."""
    from easycls.data.images import _progress

    chunks = [[0] * 10 for _ in range(100)]  # 1,000 items in chunks of 10
    assert sum(len(c) for c in _progress(iter(chunks), 1000, enabled=True)) == 1000
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines)
    assert lines == [f"{n}/1000 images" for n in range(100, 1001, 100)]


def test_an_epoch_whose_training_a_budget_cut_keeps_every_column(tmp_path):
    """fastai's Recorder leaves the train loss out of an epoch whose training was cancelled
    (what `TimeBudget` does at the deadline): the history row must not shift its columns."""
    from fastai.callback.core import Callback, CancelTrainException
    from fastai.callback.progress import ProgressCallback  # noqa: F401  (Learner.no_bar)
    from fastai.test_utils import synth_learner

    from easycls.runlog import HistoryCSV, JsonEvents

    class CutSecondEpoch(Callback):
        def after_batch(self):
            if self.training and self.epoch == 1 and self.iter == 1:
                raise CancelTrainException()

    def mae(preds, targets):
        return (preds - targets).abs().mean()

    learn = synth_learner(n_trn=64, metrics=[mae], cbs=[
        CutSecondEpoch(), HistoryCSV(tmp_path / "history.csv"), JsonEvents(tmp_path / "ev.jsonl")])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "mae", "seconds"]
    for row, values in zip(rows, learn.recorder.values):  # values: fastai's own record
        assert float(row["valid_loss"]) == pytest.approx(values[-2])
        assert float(row["mae"]) == pytest.approx(values[-1])
    assert float(rows[1]["train_loss"]) == pytest.approx(learn.recorder.losses[-1])
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["mae"] for e in events if e["event"] == "epoch"] == [float(r["mae"]) for r in rows]
