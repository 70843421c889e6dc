"""Compact JPEG store: build, reuse, pixels, failures, parts, zip sources, path choice; every
build goes through `storage.open_pixels`, the function `fit` calls."""

import io
import pickle
import zipfile

import numpy as np
import pytest
from conftest import two_builders
from PIL import Image

from easycls.data import cachedir, storage
from easycls.data.images import load_resized, zip_ref
from easycls.data.jpeg import JpegStore

SIZE = 24


JPEG = storage.FORMATS["jpeg"]


def stored_jpeg(refs, size, **kw):
    got = storage.open_pixels(refs, size, "jpeg", **kw)
    store = got.pixels
    store.built = got.built
    return store


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_CACHE", str(tmp_path / "cache"))


def _photo(seed: int, shape=(40, 56)) -> np.ndarray:
    """Smooth gradients plus a little noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = [np.sin(xx / rng.uniform(4, 9) + c) * np.cos(yy / rng.uniform(4, 9)) for c in range(3)]
    img = (np.stack(base, -1) + 1) * 110 + rng.normal(0, 4, (*shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path, seed):
    Image.fromarray(_photo(seed)).save(path, quality=95)
    return str(path)


@pytest.fixture
def refs(tmp_path):
    (tmp_path / "img").mkdir()
    return [_write(tmp_path / "img" / f"{i}.jpg", i) for i in range(8)]


def test_build_reuse_and_pixels(refs):
    store = stored_jpeg(refs, SIZE, source="photos")
    assert store.built and len(store) == 8 and store.failures == {}
    expected = np.stack([load_resized(r, SIZE) for r in refs]).astype(int)
    batch = store.decode_batch(range(8))
    assert batch.shape == (8, SIZE, SIZE, 3) and batch.dtype == np.uint8
    err = np.abs(batch[:, None].astype(int) - expected[None]).mean(axis=(2, 3, 4))
    assert err.diagonal().max() < 8  # JPEG q90 at 24 px: close, not equal
    assert (err.argmin(axis=1) == np.arange(8)).all()  # each is its own image, in order
    np.testing.assert_array_equal(store[3], batch[3])
    np.testing.assert_array_equal(store[[5, 1]], batch[[5, 1]])
    again = stored_jpeg(refs, SIZE)
    assert not again.built and again.path == store.path
    np.testing.assert_array_equal(again.decode_batch(range(8), workers=2), batch)
    assert cachedir.entries()[0].kind == "store" and cachedir.entries()[0].source == "photos"


def test_raw_bytes_are_jpegs_of_the_stored_size(refs):
    store = stored_jpeg(refs, SIZE)
    blobs = store.read([0, 7])
    assert all(b[:2] == b"\xff\xd8" for b in blobs)  # JPEG SOI: a GPU decoder takes them as is
    with Image.open(io.BytesIO(blobs[1])) as img:
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
    out = np.full((2, SIZE, SIZE, 3), 9, np.uint8)
    assert store.decode_batch([0, 7], out=out) is out and (out != 9).any()


def test_unreadable_images_are_recorded_and_decode_to_zeros(refs, tmp_path):
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    mixed = [refs[0], str(tmp_path / "img" / "empty.jpg"), refs[1], str(tmp_path / "gone.jpg")]
    store = stored_jpeg(mixed, SIZE)
    assert store.failures == {1: "zero-byte file", 3: "missing"}
    assert store.read([1]) == [b""] and not store[1].any() and not store[3].any()
    assert store[2].any()
    assert stored_jpeg(mixed, SIZE).failures == store.failures


def test_pickles_by_path_for_dataloader_workers(refs):
    store = stored_jpeg(refs, SIZE)
    blob = pickle.dumps(store)
    assert len(blob) < 2000  # no index, no descriptors
    np.testing.assert_array_equal(pickle.loads(blob)[4], store[4])


def test_parts_built_separately_equal_one_build(refs, tmp_path):
    build_dir = tmp_path / "parts.store"
    for part in (1, 0, 2):  # any order: each process writes its own shard
        JPEG.build_part(build_dir, refs, SIZE, part, 3, progress=False)
    JPEG.finish(build_dir, len(refs), SIZE, 3)
    joined = JPEG.open(build_dir, len(refs), SIZE, {})
    assert sorted(p.name for p in joined.path.iterdir()) == [
        "index.npy", "shard-000.bin", "shard-001.bin", "shard-002.bin"]
    single = stored_jpeg(refs, SIZE)
    np.testing.assert_array_equal(joined.decode_batch(range(8)), single.decode_batch(range(8)))


def test_zip_members_go_through_the_store(refs, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, r in enumerate(refs[:3]):
            z.write(r, f"cls/{i}.jpg")
    zrefs = [zip_ref(archive, f"cls/{i}.jpg") for i in range(3)]
    store = stored_jpeg(zrefs, SIZE)
    plain = stored_jpeg(refs[:3], SIZE)
    np.testing.assert_array_equal(store.decode_batch(range(3)), plain.decode_batch(range(3)))


def test_two_processes_build_once(refs):
    assert two_builders("jpeg", refs, SIZE) == [False, True]
    assert [e.kind for e in cachedir.entries()] == ["store"]


def test_choose_store(monkeypatch):
    monkeypatch.setattr(cachedir, "room", lambda root=None: 10**9)
    monkeypatch.setenv("EASYCLS_CACHE_BUDGET_GB", "0.5")
    choose_store = storage.choose
    assert choose_store("auto", [(1000, 64), (200, 56)]) == "cache"
    # 20,000 images at 255 px: 3.9 GB as uint8 (over budget), about 0.65 GB as JPEGs
    assert choose_store("auto", [(20_000, 255)]) == "jpeg"
    assert choose_store("auto", [(200_000, 255)]) == "none"  # not even the store fits
    assert choose_store("cache", [(200_000, 255)]) == "cache"  # forced: its build checks space
    assert choose_store("stream", [(200_000, 255)]) == "stream"  # never picked by auto
    with pytest.raises(ValueError, match="auto, cache, jpeg, stream, none"):
        choose_store("zarr", [(1, 8)])
    assert JPEG.estimate(1000, 224) < 1000 * 224 * 224 * 3 / 4


def test_open_store_rejects_mismatch(refs):
    store = stored_jpeg(refs, SIZE)
    assert JPEG.open(store.path, len(refs) + 1, SIZE, {}) is None
    assert isinstance(JPEG.open(store.path, len(refs), SIZE, {}), JpegStore)
    stored = storage.open_pixels(refs, SIZE, "jpeg")
    key = stored.path.name.split(".")[0]
    manifest = cachedir.read_manifest(stored.path.parent, key)
    cachedir.write_manifest(stored.path.parent, key, {**manifest, "n": len(refs) + 1})
    assert storage.open_pixels(refs, SIZE, "jpeg").built  # a manifest for other data: rebuilt
