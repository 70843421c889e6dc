"""Checkpoints: atomic writes, refusal of foreign checkpoints, exact resume after
SIGTERM/SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import signal_at, write_class_folders

import easycls
from easycls import __version__, checkpoint
from easycls.checkpoint import (
    CheckpointError,
    TrainingInterrupted,
    load_checkpoint,
    save_checkpoint,
)

# Tiny, deterministic runs: no augmentation and no dropout, so a resumed run can be compared
# number for number with an uninterrupted one.
EXACT = dict(arch="mobilenetv3_small_050", pretrained=False, epochs=3, size=32, bs=8, lr=2e-3,
             quiet=True, augment=False, workers=0)


def _state(**changes) -> dict:
    """A complete checkpoint of a made-up run (every field `load_checkpoint` checks)."""
    return {"format": 1, "easycls_version": __version__, "arch": "resnet18", "classes": ["a", "b"],
            "phase": 0, "epoch": 1, "batches_done": 0, "n_epoch": 3, "history_rows": 1,
            "elapsed": 1.5, "data_rng": [3, [1, 2], None], "model": {"w": torch.ones(3)},
            "opt": {"state": [], "hypers": []}, "rng": {"torch": 0, "python": 0, "numpy": 0},
            **changes}


def test_atomic_save_and_half_written_tmp_is_never_loaded(tmp_path):
    save_checkpoint(_state(epoch=2), tmp_path / "checkpoint.pth")
    # A write cut off by a crash leaves only the temporary file, which is never read.
    (tmp_path / "checkpoint.pth.tmp").write_bytes(b"PK\x03\x04 cut off mid-write")
    assert load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])["epoch"] == 2
    save_checkpoint(_state(epoch=3), tmp_path / "checkpoint.pth")  # replaces the stale .tmp too
    assert load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])["epoch"] == 3
    assert not (tmp_path / "checkpoint.pth.tmp").exists()


def test_damaged_or_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint.pth"):
        load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])
    save_checkpoint(_state(), tmp_path / "checkpoint.pth")
    data = (tmp_path / "checkpoint.pth").read_bytes()
    (tmp_path / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])


@pytest.mark.parametrize("changes, what", [
    (dict(easycls_version="0.0.1"), "easycls version"),
    (dict(arch="resnet50"), "arch"),
    (dict(classes=["a", "b", "c"]), "class list"),
])
def test_foreign_checkpoint_is_refused(tmp_path, changes, what):
    save_checkpoint(_state(**changes), tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match=what):
        load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])


def _history(run_dir) -> list[dict]:
    return list(csv.DictReader((run_dir / "history.csv").open()))


@pytest.mark.slow  # two full runs compared row by row
def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "pets", per_class=20)
    ref = easycls.fit(str(data), out=str(tmp_path / "ref"), **EXACT)

    run = tmp_path / "run"
    # the scheduler's SIGTERM, arriving mid-epoch
    with signal_at(monkeypatch, signal.SIGTERM, lambda c: (c.epoch, c.iter) == (1, 2)), \
            pytest.raises(TrainingInterrupted, match=f"easycls fit --resume {run}"):
        easycls.fit(str(data), out=str(run), **EXACT)
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (1, 3)
    assert len(_history(run)) == 1 and not (run / "metrics.json").exists()

    resumed = easycls.fit(resume=str(run), quiet=True)
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # planned count reached, one row per epoch
    # Same weights, same schedule position, same data order, same running train loss: every
    # column matches to the digit, except the wall-clock seconds.
    ref_rows = _history(tmp_path / "ref")
    assert _without_seconds(rows) == _without_seconds(ref_rows)
    assert resumed.easycls.metrics["valid_loss"] == pytest.approx(
        ref.easycls.metrics["valid_loss"], abs=1e-6)
    assert json.loads((run / "config.json").read_text())["epochs"] == 3


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _cli_fit(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "easycls", "fit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(pred, proc, timeout=240.0) -> None:
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, f"training ended early:\n{proc.communicate()[0]}"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_cli_sigterm_and_sigkill_then_resume_reach_the_planned_epochs(tmp_path):
    data = write_class_folders(tmp_path / "pets", per_class=20)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        str(data),
        "--arch",
        "mobilenetv3_small_050",
        "--no-pretrained",
        "--epochs",
        "5",
        "--size",
        "32",
        "--bs",
        "8",
        "--lr",
        "2e-3",
        "--workers",
        "0",
        "--out",
        str(run),
        "--quiet",
    ]
    ckpt = run / "checkpoint.pth"

    proc = _cli_fit(*args, env=env)
    _wait_for(ckpt.exists, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert f"easycls fit --resume {run}" in out and "Traceback" not in out

    proc = _cli_fit("--resume", str(run), "--quiet", env=env)
    first = ckpt.stat().st_mtime_ns
    _wait_for(lambda: ckpt.stat().st_mtime_ns != first, proc)  # one more checkpoint written...
    proc.send_signal(signal.SIGKILL)  # ...then killed without warning
    proc.communicate(timeout=60)
    saved = torch.load(ckpt, weights_only=True)

    proc = _cli_fit("--resume", str(run), "--quiet", env=env)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert (
        saved["history_rows"] <= 5
        and (run / "metrics.json").exists()
        and (run / "model.safetensors").exists()
    )


@pytest.mark.slow  # two fine_tune runs compared row by row
def test_fine_tune_resumes_in_its_second_phase(tmp_path, monkeypatch):
    import timm
    weights = tmp_path / "w.pth"
    # a local "pretrained" file
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), weights)
    data = write_class_folders(tmp_path / "pets", per_class=20)
    kw = {**EXACT, "pretrained": True, "weights": str(weights), "epochs": 2}
    ref = easycls.fit(str(data), out=str(tmp_path / "ref"), **kw)

    run = tmp_path / "run"
    in_the_unfrozen_phase = lambda c: (c.phase, c.epoch, c.iter) == (1, 0, 1)  # noqa: E731
    with signal_at(monkeypatch, signal.SIGINT, in_the_unfrozen_phase), \
            pytest.raises(TrainingInterrupted, match="SIGINT"):
        easycls.fit(str(data), out=str(run), **kw)
    state = torch.load(run / "checkpoint.pth", weights_only=True)
    assert (state["phase"], state["epoch"], state["batches_done"], state["history_rows"]) == (
        1,
        0,
        2,
        1,
    )

    easycls.fit(resume=str(run), quiet=True)
    rows, ref_rows = _history(run), _history(tmp_path / "ref")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # 1 frozen + 2 unfrozen epochs
    assert _without_seconds(rows) == _without_seconds(ref_rows)
    assert json.loads((run / "metrics.json").read_text())["valid_loss"] == pytest.approx(
        ref.easycls.metrics["valid_loss"], abs=1e-6)


def test_checkpoint_minutes_saves_inside_epochs(tmp_path, monkeypatch):
    saved = []
    real_save = checkpoint.save_checkpoint
    monkeypatch.setattr(
        checkpoint,
        "save_checkpoint",
        lambda state, path: (
            saved.append((state["epoch"], state["batches_done"])) or real_save(state, path)
        ),
    )
    data = write_class_folders(tmp_path / "pets", per_class=20)
    easycls.fit(
        str(data), out=str(tmp_path / "run"), **{**EXACT, "epochs": 1}, checkpoint_minutes=1e-9
    )
    # 48 training images: 6 batches, each followed by a timed checkpoint, then the epoch's own.
    assert saved == [(0, b) for b in range(1, 7)] + [(1, 0)]


def test_resume_of_a_missing_folder_says_so_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from easycls.cli import app
    result = CliRunner().invoke(app, ["fit", "--resume", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {tmp_path / 'nope'} is not a folder: give the run "
                                     "directory of the run to continue")
