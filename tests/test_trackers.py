"""--log wandb|mlflow|tensorboard|csv: a run reaches each tracker, in the tracker's offline
mode (WANDB_MODE=offline, an MLflow file store), and the test reads each one back."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import signal_at

import easycls
from easycls.config import ConfigError, check
from easycls.trackers import flat_numbers

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

TINY = dict(arch="test_resnet", pretrained=False, epochs=2, size=16, bs=8, lr=3e-3, quiet=True)
_BLOCK = 32 * 1024


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` file (LevelDB log blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, pos, payload = path.read_bytes(), 7, b""
    while pos + 7 <= len(raw):
        left = _BLOCK - pos % _BLOCK
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        payload += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(payload)
            yield record
            payload = b""


def _wandb_logged(file: Path) -> tuple[list[dict], dict]:
    """(history rows, summary) of one session's `.wandb` file."""
    history, summary = [], {}
    key = lambda i: i.key or "/".join(i.nested_key)  # noqa: E731  wandb-core writes nested_key
    for r in wandb_records(file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in r.summary.update})
    return history, summary


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.mark.slow
def test_wandb_mlflow_and_csv_get_each_epoch_and_the_final_metrics(class_folders, tmp_path,
                                                                  offline):
    from mlflow.tracking import MlflowClient
    out = tmp_path / "run"
    easycls.fit(str(class_folders), out=str(out), log=["wandb", "mlflow", "csv"], **TINY)
    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    valid_losses = [float(r["valid_loss"]) for r in history]
    final = json.loads((out / "metrics.json").read_text())

    client = MlflowClient(offline)
    (run,) = client.search_runs(["0"], filter_string=f"tags.mlflow.runName = '{out.name}'")
    logged = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [m.step for m in logged] == [0, 1]
    assert [m.value for m in logged] == pytest.approx(valid_losses)
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    assert run.data.metrics["final/accuracy"] == pytest.approx(final["accuracy"])

    (file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    rows, summary = _wandb_logged(file)
    per_epoch = [r["valid_loss"] for r in rows if "valid_loss" in r]
    assert per_epoch == pytest.approx(valid_losses)
    assert summary["accuracy"] == pytest.approx(final["accuracy"])

    with open(out / "log.csv", newline="") as f:
        logged_csv = [r for r in csv.DictReader(f) if r["epoch"] != "epoch"]
    assert [float(r["valid_loss"]) for r in logged_csv] == pytest.approx(valid_losses)


def test_log_takes_several_trackers_and_refuses_unknown_ones():
    assert check("log", ["wandb", "mlflow", "wandb"]) == "wandb,mlflow"
    assert check("log", "csv, tensorboard") == "csv,tensorboard"
    with pytest.raises(ConfigError, match="one or more of 'wandb'"):
        check("log", "comet")


def test_cli_log_option_repeats(monkeypatch):
    from typer.testing import CliRunner

    from easycls import train
    from easycls.cli import app
    seen = {}
    monkeypatch.setattr(train, "fit", lambda source, resume=None, **kw: seen.update(kw))
    result = CliRunner().invoke(app, ["fit", "digits", "--log", "wandb", "--log", "mlflow"])
    assert result.exit_code == 0, result.output
    assert check("log", seen["log"]) == "wandb,mlflow"


def test_mlflow_store_that_cannot_open_fails_before_training(class_folders, tmp_path,
                                                            monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with pytest.raises(ImportError, match="--log mlflow: MLflow cannot open a run"):
        easycls.fit(str(class_folders), out=str(tmp_path / "r"), log="mlflow", **TINY)
    assert not (tmp_path / "r" / "history.csv").exists()


def test_flat_numbers_joins_nested_keys():
    assert flat_numbers({"a": 1, "b": {"c": 0.5, "d": "x"}, "e": True}) == {"a": 1.0, "b/c": 0.5}


@pytest.mark.slow
def test_resume_logs_into_the_same_wandb_and_mlflow_runs(class_folders, tmp_path, offline,
                                                         monkeypatch):
    import signal

    from mlflow.tracking import MlflowClient

    from easycls.checkpoint import TrainingInterrupted
    out = tmp_path / "run"
    with signal_at(monkeypatch, signal.SIGINT, lambda c: (c.epoch, c.iter) == (1, 1)), \
            pytest.raises(TrainingInterrupted):
        easycls.fit(str(class_folders), out=str(out), log="wandb,mlflow", **TINY)
    ids = json.loads((out / "trackers.json").read_text())
    easycls.fit(resume=str(out), quiet=True)
    assert json.loads((out / "trackers.json").read_text()) == ids
    with open(out / "history.csv", newline="") as f:
        valid_losses = [float(r["valid_loss"]) for r in csv.DictReader(f)]
    assert len(valid_losses) == 2  # epoch 0 from the first session, epoch 1 from the second

    client = MlflowClient(offline)
    (run,) = client.search_runs(["0"])  # one run, not one per session
    assert run.info.run_id == ids["mlflow"] and run.info.status == "FINISHED"
    logged = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [m.step for m in logged] == [0, 1]
    assert [m.value for m in logged] == pytest.approx(valid_losses)

    sessions = sorted(out.glob("wandb/offline-run-*"))
    # wandb names a session's folder offline-run-<time>-<id>, plus -1, -2... when two start
    # within one second
    named = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{ids['wandb']}(-\d+)?")
    assert len(sessions) == 2 and all(named.fullmatch(s.name) for s in sessions), sessions
    rows = [row for s in sessions for row in _wandb_logged(next(s.glob("run-*.wandb")))[0]]
    assert [r["valid_loss"] for r in rows if "valid_loss" in r] == pytest.approx(valid_losses)
