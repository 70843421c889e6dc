"""`--overwrite` never loses a run: every check comes first, the old files are set aside (not
deleted) until the new run writes, and any failure before that puts them back byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY, write_class_folders

import easycls
from easycls.config import ConfigError
from easycls.data.items import DataError
from easycls.learners import ArchError
from easycls.runlock import LOCK_NAME, REPLACED_NAME, RunLockError, claim

TINY_RUN = {**TINY, "arch": "test_resnet"}


def tree(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256 of its bytes and its mode)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(
        p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("overwrite")
    data = write_class_folders(base / "pets", per_class=6)
    run = base / "run"
    easycls.fit(str(data), out=str(run), **TINY_RUN)
    (run / "notes.txt").write_text("not a run file: never touched")
    return data, run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained[1], copy)
    return copy


@pytest.mark.parametrize("change, error", [
    (dict(arch="resnet81"), ArchError),                      # a typo in the arch
    (dict(source="missing-folder/"), DataError),             # a source that is not there
    (dict(epochs=-1), ConfigError),                          # a bad option
    (dict(source="empty"), DataError),                       # found, but fails while read
])
def test_a_failed_overwrite_leaves_the_run_byte_identical(trained, run, tmp_path, change, error):
    data = trained[0]
    (tmp_path / "empty").mkdir()
    before = tree(run)
    source = change.pop("source", str(data))
    source = str(tmp_path / source) if source in ("missing-folder/", "empty") else source
    with pytest.raises(error):
        easycls.fit(source, out=str(run), overwrite=True, **{**TINY_RUN, **change})
    assert tree(run) == before
    assert not (run / REPLACED_NAME).exists() and not (run / LOCK_NAME).exists()


def test_a_successful_overwrite_replaces_the_run_files_only(trained, run):
    old = (run / "model.safetensors").read_bytes()
    (run / "tensorboard").mkdir()  # the old run's tracker logs go with it
    (run / "tensorboard" / "events.out.tfevents.1.old").write_bytes(b"old")
    (run / "log.csv").write_text("epoch,train_loss\n0,9.9\n")
    easycls.fit(str(trained[0]), out=str(run), overwrite=True, **{**TINY_RUN, "seed": 7})
    assert (run / "model.safetensors").read_bytes() != old
    assert (run / "notes.txt").read_text() == "not a run file: never touched"
    assert not (run / REPLACED_NAME).exists()
    assert not (run / "tensorboard").exists() and not (run / "log.csv").exists()


def test_cli_overwrite_with_a_typo_arch(trained, run):
    """The case of the issue, as a user types it: exit 2, one line, the run untouched."""
    before = tree(run)
    done = subprocess.run([sys.executable, "-m", "easycls", "fit", str(trained[0]), "--out",
                           str(run), "--overwrite", "--arch", "resnet81", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "resnet81" in done.stderr and "Traceback" not in done.stderr
    assert tree(run) == before


KILLED = textwrap.dedent("""
    import os, sys
    from easycls.runlock import claim
    with claim(sys.argv[1], overwrite=True) as lock:
        lock.set_aside()
        os._exit(9)   # killed after setting the old run aside, before the new one wrote
""")


def test_an_overwrite_killed_before_it_wrote_gets_the_old_run_back(run):
    before = tree(run)
    subprocess.run([sys.executable, "-c", KILLED, str(run)], check=False, timeout=60)
    assert (run / REPLACED_NAME / "model.json").exists()
    with pytest.raises(RunLockError, match="holds the files of another run"):
        with claim(run):  # the next claim puts them back, so they are refused as usual
            pass
    assert tree(run) == before


@pytest.fixture
def read_only(run):
    """`run` made read-only: a read-only bind mount as root (root ignores modes), else chmod."""
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-o", "bind,ro", str(run), str(run)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot bind-mount read-only here")
        yield run
        subprocess.run(["umount", str(run)], check=False)
    else:
        os.chmod(run, 0o555)
        yield run
        os.chmod(run, 0o755)


def test_overwrite_of_a_read_only_run(trained, read_only):
    before = tree(read_only)
    with pytest.raises(PermissionError if os.geteuid() else OSError):
        easycls.fit(str(trained[0]), out=str(read_only), overwrite=True, **TINY_RUN)
    assert tree(read_only) == before
