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
from easycls.runlock import LOCK_NAME, RunLock, RunLockError, claim

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
    monkeypatch.setattr(runlock, "_try_flock", lambda fd: None)  # e.g. a filesystem without flock
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
    with claim(run, overwrite=True):  # the old run's files go, nothing else
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "notes.txt"]
    with claim(tmp_path / "new"):  # a new or empty folder is fine
        pass


def test_session_claim_fails_every_rank_together(holder):
    from easycls.distributed import Session
    run, proc = holder
    with pytest.raises(RunLockError, match=f"pid {proc.pid}"):
        with Session().claim(run):
            pass
    proc.kill()
    proc.wait()
    with Session().claim(run):
        assert (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()
