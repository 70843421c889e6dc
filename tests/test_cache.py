"""Decoded-image cache: build, reuse, invalidation, crash safety, failures; every build goes
through `storage.open_pixels`, the function `fit` calls."""

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import two_builders
from PIL import Image

from easycls.data import storage
from easycls.data.cachedir import cache_root
from easycls.data.images import load_resized, zip_ref

SIZE = 16


UINT8 = storage.FORMATS["cache"]


def cache_key(refs, size):
    return UINT8.key(refs, size)


def stored_cache(refs, size, **kw):
    return storage.open_pixels(refs, size, "cache", **kw)


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
    first = stored_cache(refs, SIZE)
    assert first.built and first.failures == {}
    assert first.pixels.shape == (6, SIZE, SIZE, 3) and first.pixels.dtype == np.uint8
    np.testing.assert_array_equal(first.pixels, _expected(refs))
    second = stored_cache(refs, SIZE)
    assert not second.built and second.path == first.path
    np.testing.assert_array_equal(second.pixels, first.pixels)
    assert not second.pixels.flags.writeable  # mapped read-only


def test_changed_or_added_file_rebuilds(refs, tmp_path):
    first = stored_cache(refs, SIZE)
    _write(refs[2], seed=99)
    st = os.stat(refs[2])
    os.utime(refs[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    changed = stored_cache(refs, SIZE)
    assert changed.built and changed.path != first.path
    np.testing.assert_array_equal(changed.pixels, _expected(refs))
    more = [*refs, _write(tmp_path / "img" / "new.jpg", 7)]
    assert stored_cache(more, SIZE).built
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
    cache = stored_cache(refs, SIZE)
    assert cache.built
    np.testing.assert_array_equal(cache.pixels, _expected(refs))
    assert not (root / f"{key}.npy.partial").exists()
    assert json.loads((root / f"{key}.json").read_text())["n"] == len(refs)


def test_failures_are_recorded_and_zero_filled(refs, tmp_path):
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    mixed = [refs[0], str(tmp_path / "img" / "empty.jpg"), refs[1], str(tmp_path / "gone.jpg")]
    cache = stored_cache(mixed, SIZE)
    assert cache.failures == {1: "zero-byte file", 3: "missing"}
    assert not cache.pixels[1].any() and not cache.pixels[3].any()
    np.testing.assert_array_equal(cache.pixels[[0, 2]], _expected([refs[0], refs[1]]))
    assert stored_cache(mixed, SIZE).failures == cache.failures


def test_zip_members_are_cached_and_keyed_by_content(refs, tmp_path):
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i, r in enumerate(refs[:3]):
            zf.write(r, f"c/{i}.jpg")
    zrefs = [zip_ref(zpath, f"c/{i}.jpg") for i in range(3)]
    first = stored_cache(zrefs, SIZE)
    np.testing.assert_array_equal(first.pixels, _expected(refs[:3]))
    key = cache_key(zrefs, SIZE)
    with zipfile.ZipFile(zpath, "w") as zf:  # same names, other pixels
        for i, r in enumerate(refs[3:]):
            zf.write(r, f"c/{i}.jpg")
    assert cache_key(zrefs, SIZE) != key
    np.testing.assert_array_equal(
        stored_cache(zrefs, SIZE).pixels, _expected(refs[3:])
    )


def test_second_builder_waits_then_reuses(refs):
    assert two_builders("cache", refs, SIZE) == [False, True]
    assert json.loads((cache_root() / f"{cache_key(refs, SIZE)}.json").read_text())["n"] == 6
    np.testing.assert_array_equal(stored_cache(refs, SIZE).pixels, _expected(refs))


def test_estimate():
    assert UINT8.estimate(10, 8) >= 10 * 8 * 8 * 3
