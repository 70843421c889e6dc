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
ARGS = ["--arch", "resnet18", "--no-pretrained", "--epochs", "2", "--size", "16", "--bs", "8", "--lr", "1e-3",
        "--quiet"]
has_tensorboard = importlib.util.find_spec("tensorboard") is not None


def test_log_json_matches_history(tmp_path):
    data = write_class_folders(tmp_path / "pets")
    events = tmp_path / "events.jsonl"
    result = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "run"), "--log-json", str(events), *ARGS])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["fit_start", "epoch", "epoch", "fit_end"]
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [e["epoch"] for e in lines if e["event"] == "epoch"] == [int(r["epoch"]) for r in history]
    for e, r in zip([e for e in lines if e["event"] == "epoch"], history):
        assert e["valid_loss"] == pytest.approx(float(r["valid_loss"]))


@pytest.mark.skipif(not has_tensorboard, reason="tensorboard not installed")
def test_tensorboard_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data = write_class_folders(tmp_path / "pets")
    result = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "run"), "--tensorboard", *ARGS])
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
    result = runner.invoke(app, ["fit", str(data), "--out", str(tmp_path / "run"), "--tensorboard", *ARGS])
    assert result.exit_code == 2
    assert "pip install tensorboard" in result.output
    assert not (tmp_path / "run" / "history.csv").exists()  # stopped before training
