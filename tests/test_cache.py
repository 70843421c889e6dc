"""Decoded-image cache: build, reuse, invalidation, crash safety, failures."""

import json
import multiprocessing as mp
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from easycls.data import cache as cache_mod
from easycls.data.cache import (
    cache_key,
    cache_root,
    estimate_bytes,
    fits_budget,
    load_or_build,
)
from easycls.data.images import load_resized, zip_ref
from easycls.data.locks import locked

SIZE = 16


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_CACHE", str(tmp_path / "cache"))


def _write(path, seed, shape=(24, 32)):
    a = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, quality=90)
    return str(path)


@pytest.fixture
def refs(tmp_path):
    (tmp_path / "img").mkdir()
    return [_write(tmp_path / "img" / f"{i}.jpg", i) for i in range(6)]


def _expected(refs):
    return np.stack([load_resized(r, SIZE) for r in refs])


def test_cache_root_env(tmp_path, monkeypatch):
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("EASYCLS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "easycls"


def test_build_then_reuse(refs):
    first = load_or_build(refs, SIZE, progress=False)
    assert first.built and first.failures == {}
    assert first.array.shape == (6, SIZE, SIZE, 3) and first.array.dtype == np.uint8
    np.testing.assert_array_equal(first.array, _expected(refs))
    second = load_or_build(refs, SIZE, progress=False)
    assert not second.built and second.path == first.path
    np.testing.assert_array_equal(second.array, first.array)
    assert not second.array.flags.writeable  # mapped read-only


def test_changed_or_added_file_rebuilds(refs, tmp_path):
    first = load_or_build(refs, SIZE, progress=False)
    _write(refs[2], seed=99)
    st = os.stat(refs[2])
    os.utime(refs[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    changed = load_or_build(refs, SIZE, progress=False)
    assert changed.built and changed.path != first.path
    np.testing.assert_array_equal(changed.array, _expected(refs))
    more = [*refs, _write(tmp_path / "img" / "new.jpg", 7)]
    assert load_or_build(more, SIZE, progress=False).built
    assert cache_key(refs, SIZE) != cache_key(refs[:-1], SIZE) != cache_key(refs[:-1], SIZE + 1)


def test_leftover_partial_is_never_used(refs):
    root = cache_root()
    root.mkdir(parents=True)
    key = cache_key(refs, SIZE)
    # A crash mid-build: a bogus array under both names, and no manifest.
    bogus = np.full((len(refs), SIZE, SIZE, 3), 7, np.uint8)
    np.save(root / f"{key}.npy", bogus)
    os.replace(root / f"{key}.npy", root / f"{key}.npy.partial")
    np.save(root / f"{key}.npy", bogus)
    cache = load_or_build(refs, SIZE, progress=False)
    assert cache.built
    np.testing.assert_array_equal(cache.array, _expected(refs))
    assert not (root / f"{key}.npy.partial").exists()
    assert json.loads((root / f"{key}.json").read_text())["n"] == len(refs)


def test_failures_are_recorded_and_zero_filled(refs, tmp_path):
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    mixed = [refs[0], str(tmp_path / "img" / "empty.jpg"), refs[1], str(tmp_path / "gone.jpg")]
    cache = load_or_build(mixed, SIZE, progress=False)
    assert cache.failures == {1: "zero-byte file", 3: "missing"}
    assert not cache.array[1].any() and not cache.array[3].any()
    np.testing.assert_array_equal(cache.array[[0, 2]], _expected([refs[0], refs[1]]))
    assert load_or_build(mixed, SIZE, progress=False).failures == cache.failures


def test_zip_members_are_cached_and_keyed_by_content(refs, tmp_path):
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, r in enumerate(refs[:3]):
            zf.write(r, f"c/{i}.jpg")
    zrefs = [zip_ref(zpath, f"c/{i}.jpg") for i in range(3)]
    first = load_or_build(zrefs, SIZE, progress=False)
    np.testing.assert_array_equal(first.array, _expected(refs[:3]))
    key = cache_key(zrefs, SIZE)
    with zipfile.ZipFile(zpath, "w") as zf:  # same names, other pixels
        for i, r in enumerate(refs[3:]):
            zf.write(r, f"c/{i}.jpg")
    assert cache_key(zrefs, SIZE) != key
    np.testing.assert_array_equal(
        load_or_build(zrefs, SIZE, progress=False).array, _expected(refs[3:])
    )


def _build_in_child(refs, queue):
    queue.put(load_or_build(refs, SIZE, progress=False).built)


def test_second_builder_waits_then_reuses(refs):
    root, key = cache_root(), cache_key(refs, SIZE)
    root.mkdir(parents=True)
    manifest = root / f"{key}.json"
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_build_in_child, args=(refs, queue))
    with locked(root / f"{key}.lock"):  # this process is the first builder
        child.start()
        child.join(timeout=0.5)
        assert child.is_alive() and not manifest.exists()  # the second one waits
        cache_mod._build(refs, SIZE, root, key, workers=1, progress=False, source="")
    child.join(timeout=30)
    assert queue.get(timeout=5) is False  # and then reuses what the first built
    np.testing.assert_array_equal(load_or_build(refs, SIZE).array, _expected(refs))


def test_budget():
    assert estimate_bytes(10, 8) >= 10 * 8 * 8 * 3
    assert fits_budget(100, 32, budget_bytes=10**9)
    assert not fits_budget(100, 32, budget_bytes=1000)
    assert not fits_budget(10**9, 512)  # petabytes: over the default 20 GB
