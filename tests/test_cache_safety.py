"""A cache folder that fails safely: full disks, size cap with LRU eviction, listing and
clearing, bounded lock waits, and row views that do not copy the cache. Every build goes
through `storage.open_pixels`, the function `fit` calls."""

import errno
import os
import shutil
import subprocess
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from easycls.data import cachedir, storage
from easycls.data.cachedir import LockTimeout, locked
from easycls.data.loaders import Rows
from easycls.data.sources import DataError

SIZE = 16


def estimate_bytes(n, size):
    return storage.FORMATS["cache"].estimate(n, size)


def stored_cache(refs, size, **kw):
    return storage.open_pixels(refs, size, "cache", **kw)


def stored_jpeg(refs, size, **kw):
    return storage.open_pixels(refs, size, "jpeg", **kw)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_CACHE", str(tmp_path / "cache"))


def _images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = np.random.default_rng(seed * 1000 + i).integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{i}.png")
        out.append(str(folder / f"{i}.png"))
    return out


def _no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("kind", ["cache", "store"])
def test_fallocate_failure_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, kind):
    refs = _images(tmp_path / "img", 5)
    build = stored_cache if kind == "cache" else stored_jpeg
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    with pytest.raises(DataError) as err:
        build(refs, SIZE)
    message = str(err.value)
    assert "EASYCLS_CACHE" in message and str(cachedir.cache_root()) in message
    assert "it needs 4.0 kB" in message if kind == "cache" else "it needs" in message
    leftovers = [p.name for p in cachedir.cache_root().iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    monkeypatch.undo()
    monkeypatch.setenv("EASYCLS_CACHE", str(tmp_path / "cache"))
    assert build(refs, SIZE).built  # the next run works


def test_not_enough_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    refs = _images(tmp_path / "img", 3)
    monkeypatch.setattr(cachedir, "free_bytes", lambda path: 10 * 2**20)
    with pytest.raises(DataError, match="not enough disk space"):
        stored_cache(refs, SIZE)
    assert not any(cachedir.cache_root().glob("*.npy*"))


def _mount_tmpfs(path, size):
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_real_full_disk(tmp_path, monkeypatch):
    """A 4 MB tmpfs and a cache of 7.7 MB; free space is faked so the build really starts."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        monkeypatch.setenv("EASYCLS_CACHE", str(disk))
        refs = _images(tmp_path / "img", 10)
        size = 512  # 10 x 512 x 512 x 3 = 7.9 MB > 4 MB
        monkeypatch.setattr(cachedir, "free_bytes", lambda path: 10**12)
        for build in (stored_cache, stored_jpeg):
            with pytest.raises(DataError, match="not enough disk space"):
                build(refs, size if build is stored_cache else 2048)
            assert shutil.disk_usage(disk).used < 2**20  # nothing left filling the disk
            assert [p.name for p in disk.iterdir() if not p.name.endswith(".lock")] == []
        assert stored_cache(refs, 64).built  # a cache that fits: works
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_eviction_keeps_the_cap_and_drops_the_least_recently_used(tmp_path, monkeypatch):
    one = estimate_bytes(6, SIZE)
    monkeypatch.setenv("EASYCLS_CACHE_MAX_GB", str(2.5 * one / 1e9))
    sets = [_images(tmp_path / f"img{k}", 6, seed=k) for k in range(3)]
    first = stored_cache(sets[0], SIZE)
    second = stored_cache(sets[1], SIZE)
    stamp = time.time()
    os.utime(second.path.with_suffix(".json"), (stamp - 100, stamp - 100))
    stored_cache(sets[0], SIZE)  # reuse: the first is now the most recent
    stored_cache(sets[2], SIZE)
    kept = cachedir.entries()
    assert sum(e.bytes for e in kept) <= cachedir.cache_cap()
    assert first.path.exists() and not second.path.exists()
    assert len(kept) == 2


def test_over_the_cap_alone_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_CACHE_MAX_GB", "0.000001")
    with pytest.raises(DataError, match="EASYCLS_CACHE_MAX_GB"):
        stored_cache(_images(tmp_path / "img", 3), SIZE)


def test_listing_and_clearing(tmp_path):
    stored_cache(_images(tmp_path / "a", 4), SIZE, source="a-data")
    stored_jpeg(_images(tmp_path / "b", 4, seed=1), SIZE, source="b")
    root = cachedir.cache_root()
    (root / f"{uuid.uuid4().hex * 2}.npy.partial-1").write_bytes(b"x" * 10)  # crashed build
    listed = cachedir.entries()
    assert sorted(e.kind for e in listed) == ["cache", "partial", "store"]
    cache = next(e for e in listed if e.kind == "cache")
    assert cache.source == "a-data" and cache.n == 4 and cache.bytes >= estimate_bytes(4, SIZE)
    assert [e.key for e in cachedir.clear(keys=[cache.key[:8]])] == [cache.key]
    assert sorted(e.kind for e in cachedir.entries()) == ["partial", "store"]
    assert cachedir.clear(older_than=3600) == []
    assert len(cachedir.clear()) == 2 and cachedir.entries() == []


def test_entry_being_built_is_not_cleared(tmp_path):
    stored_cache(_images(tmp_path / "a", 2), SIZE)
    (entry,) = cachedir.entries()
    with locked(entry.root / f"{entry.key}.lock"):
        assert cachedir.clear() == []
    assert len(cachedir.clear()) == 1


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_lock_wait_reports_progress_and_gives_up(tmp_path):
    path, clock, said = tmp_path / "x.lock", _Clock(), []
    with locked(path):
        with pytest.raises(LockTimeout, match="EASYCLS_LOCK_TIMEOUT") as err:
            with locked(path, "building X", timeout=150, say=said.append, clock=clock,
                        sleep=clock.sleep):
                pass
    assert isinstance(err.value, DataError)
    assert [s.split(" (")[0] for s in said] == ["waiting for another process doing building X"] * 3
    assert "(60 s;" in said[1] and clock.now >= 150
    with locked(path, timeout=0):  # free again
        pass


def test_rows_view_indexes_without_copying(tmp_path):
    base = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.uint8, (50, 4, 4, 3))
    base[:] = np.arange(50).reshape(50, 1, 1, 1)
    view = Rows(np.load(tmp_path / "a.npy", mmap_mode="r"), [i for i in range(50) if i != 7])
    assert len(view) == 49 and view.shape == (49, 4, 4, 3)
    assert view[7][0, 0, 0] == 8 and view[-1][0, 0, 0] == 49
    assert [b[0, 0, 0] for b in view[[0, 7, 48]]] == [0, 8, 49]
    assert isinstance(view[3], np.memmap)  # one row of the map, not a copy of all of them
