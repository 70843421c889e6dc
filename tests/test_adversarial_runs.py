"""Runs that collide or die: one run per directory, stale locks, a full disk mid-training.

Failure 1 of the reliability issue (two runs on one --out mixed their files) and failure 3
(a full disk while writing the checkpoint lost the epoch) are kept here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from easycls import runlock
from easycls.runlock import LOCK_NAME, REPLACED_NAME, RunLock, RunLockError, claim

HOLD = textwrap.dedent("""
    import sys, time
    from easycls.runlock import RunLock
    with RunLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/run."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), "fit", "--out", str(run)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.kill()
    proc.wait()


def test_second_run_on_a_held_directory_is_refused_naming_the_holder(holder):
    """Failure 1: a second run on the same directory fails at once, naming the other process."""
    run, proc = holder
    with pytest.raises(RunLockError) as e:
        RunLock(run).acquire()
    msg = str(e.value)
    assert f"pid {proc.pid} on host {socket.gethostname()}" in msg and "another --out" in msg
    proc.kill()
    proc.wait()  # killed without releasing anything: the kernel drops the flock
    with RunLock(run) as lock:
        assert lock.stale["pid"] == proc.pid  # the dead run's record, taken over
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()  # released on exit


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with claim(tmp_path / "run"):
            raise RuntimeError("boom")
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with claim(tmp_path / "run"):  # and can be taken again
        pass


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("host, pid, free", [
    ("here", "dead", True),      # a killed run on this host: stale, taken over
    ("here", "alive", False),    # a live process on this host: respected
    ("other", "dead", False),    # another host cannot be checked: respected, file named
])
def test_without_flock_the_pid_and_host_decide(tmp_path, monkeypatch, host, pid, free):
    monkeypatch.setattr(runlock, "try_flock", lambda fd: None)  # e.g. a filesystem without flock
    run = tmp_path / "run"
    run.mkdir()
    record = dict(pid=_dead_pid() if pid == "dead" else os.getppid(), command="easycls fit x",
                  host=socket.gethostname() if host == "here" else "elsewhere-node-7")
    (run / LOCK_NAME).write_text(json.dumps(record))
    if free:
        with RunLock(run) as lock:
            assert lock.stale == record
        return
    with pytest.raises(RunLockError, match=rf"pid {record['pid']} on host {record['host']}.*"
                                           rf"remove {run / LOCK_NAME}"):
        RunLock(run).acquire()


def test_another_runs_files_are_refused_unless_resumed_or_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,train_loss\n0,1.0\n1,0.5\n")
    (run / "checkpoint.pth").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunLockError, match=r"holds the files of another run \(checkpoint.pth, "
                                           r"history.csv\).*--resume.*--overwrite"):
        with claim(run):
            pass
    with claim(run, resume=True):
        assert (run / "history.csv").exists()
    with claim(run, overwrite=True) as lock:  # the old run's files go, nothing else
        lock.set_aside()
        assert sorted(p.name for p in run.iterdir()) == [REPLACED_NAME, LOCK_NAME, "notes.txt"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    with claim(tmp_path / "new"):  # a new or empty folder is fine
        pass


def test_claim_together_fails_every_rank_together(holder):
    from easycls.job import ONE
    from easycls.runlock import claim_together
    run, proc = holder
    with pytest.raises(RunLockError, match=f"pid {proc.pid}"):
        with claim_together(ONE, run):
            pass
    proc.kill()
    proc.wait()
    with claim_together(ONE, run):
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_stops_in_one_line_and_resume_continues(tmp_path, monkeypatch):
    """Failure 3: a full disk while writing the checkpoint says so in one line (exit 1), leaves
    no temporary behind, keeps the last good checkpoint, and --resume continues from it."""
    import torch
    from conftest import write_class_folders
    from test_checkpoint import EXACT, _history
    from test_safeio import fail_writes
    from typer.testing import CliRunner

    import easycls
    from easycls.cli import app
    data = write_class_folders(tmp_path / "pets", per_class=20)
    run = tmp_path / "run"
    args = ["fit", str(data), "--out", str(run), "--arch", EXACT["arch"], "--no-pretrained",
            "--epochs", "3", "--size", "32", "--bs", "8", "--lr", "2e-3", "--no-augment",
            "--workers", "0", "--quiet"]
    with monkeypatch.context() as m:
        fail_writes(m, "checkpoint.pth", after=1000, skip=1)  # epoch 1's fits, epoch 2's does not
        result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: disk full: could not write {run / 'checkpoint.pth'}")
    assert f"easycls fit --resume {run}" in lines[0]
    assert not (run / "checkpoint.pth.tmp").exists()
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 1
    easycls.fit(resume=str(run), quiet=True)
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1, 2]
    assert (run / "metrics.json").exists()


def test_fit_on_a_directory_in_use_fails_before_reading_any_data(holder, tmp_path):
    """Failure 1: the lock is taken before the data is scanned (the source here does not even
    exist), so a second run fails at once."""
    import easycls
    run, proc = holder
    with pytest.raises(RunLockError, match=f"in use by another easycls run: pid {proc.pid}"):
        easycls.fit(str(tmp_path / "no-such-data"), out=str(run), quiet=True)
    with pytest.raises(RunLockError, match=f"pid {proc.pid}"):
        easycls.fit(resume=str(run))


@pytest.mark.slow
def test_two_cli_runs_on_one_out(tmp_path):
    """Failure 1: the second `easycls fit` on the same --out exits 2 at once, naming the first;
    after the first is killed, its stale lock does not block --overwrite."""
    import signal
    import time

    from conftest import write_class_folders
    data = write_class_folders(tmp_path / "pets", per_class=20)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "easycls", "fit", str(data), "--out", str(run), "--arch",
            "resnet18", "--no-pretrained", "--size", "32", "--bs", "8", "--lr", "1e-3",
            "--workers", "0", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args + ["--epochs", "50"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (run / LOCK_NAME).exists():
        assert first.poll() is None, first.communicate()[0]
        assert time.time() - t0 < 120
        time.sleep(0.05)
    second = subprocess.run(args + ["--epochs", "1"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"in use by another easycls run: pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    third = subprocess.run(args + ["--epochs", "1", "--overwrite"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert third.returncode == 0, third.stdout + third.stderr
    rows = (run / "history.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("0,")  # one run's rows only
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("text, says", [
    ("{not json", "cannot be read as JSON"),
    ('["a"]', "must hold a JSON object of settings"),
    ('{"epochs": "5"}', "epochs"),
    ('{"bs": -3}', "bs"),
    ('{"arch": 7}', "arch"),
    ('{"extra": [1]}', "'extra' an object"),
])
def test_crafted_config_json_is_refused_on_resume(tmp_path, text, says):
    """Validated run directories: config.json is checked like the options on --resume, and
    the error names the file (one line on the command line, exit status 2)."""
    from typer.testing import CliRunner

    import easycls
    from easycls.cli import app
    from easycls.config import ConfigError
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=rf"{run / 'config.json'}.*{says}"):
        easycls.fit(resume=str(run))
    result = CliRunner().invoke(app, ["fit", "--resume", str(run)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and str(run / "config.json") in lines[0]
    assert not (run / LOCK_NAME).exists()  # released on the way out


def test_crafted_checkpoint_fields_are_refused(tmp_path):
    from test_checkpoint import _state

    from easycls.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    for bad, says in [(dict(epoch="1"), "'epoch' should be an integer >= 0"),
                      (dict(n_epoch=0), "'n_epoch' should be an integer >= 1"),
                      (dict(model={"w": [1, 2]}), "'model' should be a dict of tensors"),
                      (dict(epoch=9), "'epoch' 9 is past 'n_epoch' 3")]:
        save_checkpoint(_state(**bad), tmp_path / "checkpoint.pth")
        with pytest.raises(CheckpointError, match=says):
            load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])
    state = _state()
    del state["rng"]
    save_checkpoint(state, tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="'rng' should be saved random states, found missing"):
        load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])
