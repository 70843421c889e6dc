"""Atomic writes: the last good file survives a full disk, the error says so in one line."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest
import torch

from easycls import safeio
from easycls.checkpoint import load_checkpoint, save_checkpoint
from easycls.safeio import DiskFullError, WriteError, printable, write_bytes, write_text


def fail_writes(monkeypatch, suffix: str, after: int = 0, err: int = errno.ENOSPC,
                skip: int = 0) -> None:
    """Writes to temporaries named `*<suffix>.tmp` raise `err` once `after` bytes are written,
    as a disk that fills up mid-file does; the first `skip` such files are written normally."""
    real_open, opened = open, []

    class Filling:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            if self.n + len(data) > after:
                raise OSError(err, os.strerror(err))
            self.n += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        if not str(path).endswith(suffix + ".tmp"):
            return f
        opened.append(path)
        return Filling(f) if len(opened) > skip else f

    monkeypatch.setattr(safeio, "open", fake_open, raising=False)


def test_write_replaces_atomically_with_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "one\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "one\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    os.chmod(tmp_path / "a.txt", 0o604)
    write_bytes(tmp_path / "a.txt", b"two\n")  # a replaced file keeps its permissions
    assert (tmp_path / "a.txt").read_bytes() == b"two\n"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o604
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_full_disk_keeps_the_last_good_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    write_text(target, "good\n")
    fail_writes(monkeypatch, "metrics.json", after=3)
    with pytest.raises(DiskFullError) as e:
        write_text(target, "x" * 5000)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("disk full") and str(target) in msg
    assert "needs at least" in msg and "MB" in msg and "free there" in msg
    assert target.read_text() == "good\n" and not (tmp_path / "metrics.json.tmp").exists()
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC


def test_other_write_errors_are_one_line_too(tmp_path, monkeypatch):
    fail_writes(monkeypatch, "x.csv", err=errno.EIO)
    with pytest.raises(WriteError, match=r"could not write .*x.csv: Input/output error") as e:
        write_text(tmp_path / "x.csv", "a,b\n")
    assert not isinstance(e.value, DiskFullError) and not list(tmp_path.iterdir())


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch):
    from test_checkpoint import _state
    save_checkpoint(_state(epoch=1), tmp_path / "checkpoint.pth")
    fail_writes(monkeypatch, "checkpoint.pth", after=100)
    # torch.save reports the failed write as "unexpected pos": the error still says disk full
    with pytest.raises(DiskFullError, match=r"disk full: could not write .*checkpoint.pth"):
        save_checkpoint(_state(epoch=2, model={"w": torch.ones(10_000)}),
                        tmp_path / "checkpoint.pth")
    assert load_checkpoint(tmp_path, arch="resnet18", classes=["a", "b"])["epoch"] == 1
    assert not (tmp_path / "checkpoint.pth.tmp").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root and mount; skipped elsewhere)."""
    where = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_real_full_disk_checkpoint_and_bundle(tiny_disk):
    import timm
    from test_checkpoint import _state

    from easycls.bundle import load, save_bundle
    save_checkpoint(_state(epoch=1), tiny_disk / "checkpoint.pth")
    big = _state(epoch=2, model={"w": torch.ones(800_000)})  # 3.2 MB on a 2 MB disk
    with pytest.raises(DiskFullError, match="disk full"):
        save_checkpoint(big, tiny_disk / "checkpoint.pth")
    assert load_checkpoint(tiny_disk, arch="resnet18", classes=["a", "b"])["epoch"] == 1
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["checkpoint.pth"]
    assert safeio.shutil.disk_usage(tiny_disk).free > 1_900_000  # the disk is not left full

    model = timm.create_model("resnet18", pretrained=False, num_classes=2)  # 45 MB of weights
    with pytest.raises(DiskFullError, match=r"the model bundle needs .* MB .* nothing was written"):
        save_bundle(model, tiny_disk, arch="resnet18", classes=["a", "b"], size=32,
                    mean=[0.5] * 3, std=[0.2] * 3)
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["checkpoint.pth"]
    small = timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=2)
    save_bundle(small, tiny_disk, arch="test_resnet", classes=["a", "b"], size=32,
                mean=[0.5] * 3, std=[0.2] * 3)
    assert load(tiny_disk, device="cpu").classes == ["a", "b"]


def test_printable_names():
    assert printable(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"
    assert printable("caf\u00e9.png") == "caf\u00e9.png"
    assert printable(b"x\xfe.jpg") == "x\\xfe.jpg"
