"""Compact JPEG store: build, reuse, pixels, failures, parts, zip sources, path choice."""

import io
import multiprocessing as mp
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from easycls.data import cachedir
from easycls.data import store as store_mod
from easycls.data.images import load_resized, zip_ref
from easycls.data.store import (
    JpegStore,
    build_part,
    choose_store,
    estimate_store_bytes,
    finish,
    load_or_build_store,
    partial_dir,
    store_key,
)

SIZE = 24


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
    store = load_or_build_store(refs, SIZE, progress=False, source="photos")
    assert store.built and len(store) == 8 and store.failures == {}
    expected = np.stack([load_resized(r, SIZE) for r in refs]).astype(int)
    batch = store.decode_batch(range(8))
    assert batch.shape == (8, SIZE, SIZE, 3) and batch.dtype == np.uint8
    err = np.abs(batch[:, None].astype(int) - expected[None]).mean(axis=(2, 3, 4))
    assert err.diagonal().max() < 8  # JPEG q90 at 24 px: close, not equal
    assert (err.argmin(axis=1) == np.arange(8)).all()  # each is its own image, in order
    np.testing.assert_array_equal(store[3], batch[3])
    np.testing.assert_array_equal(store[[5, 1]], batch[[5, 1]])
    again = load_or_build_store(refs, SIZE, progress=False)
    assert not again.built and again.path == store.path
    np.testing.assert_array_equal(again.decode_batch(range(8), workers=2), batch)
    assert cachedir.entries()[0].kind == "store" and cachedir.entries()[0].source == "photos"


def test_raw_bytes_are_jpegs_of_the_stored_size(refs):
    store = load_or_build_store(refs, SIZE, progress=False)
    blobs = store.read([0, 7])
    assert all(b[:2] == b"\xff\xd8" for b in blobs)  # JPEG SOI: a GPU decoder takes them as is
    with Image.open(io.BytesIO(blobs[1])) as img:
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"
    out = np.full((2, SIZE, SIZE, 3), 9, np.uint8)
    assert store.decode_batch([0, 7], out=out) is out and (out != 9).any()


def test_unreadable_images_are_recorded_and_decode_to_zeros(refs, tmp_path):
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    mixed = [refs[0], str(tmp_path / "img" / "empty.jpg"), refs[1], str(tmp_path / "gone.jpg")]
    store = load_or_build_store(mixed, SIZE, progress=False)
    assert store.failures == {1: "zero-byte file", 3: "missing"}
    assert store.read([1]) == [b""] and not store[1].any() and not store[3].any()
    assert store[2].any()
    assert load_or_build_store(mixed, SIZE, progress=False).failures == store.failures


def test_pickles_by_path_for_dataloader_workers(refs):
    store = load_or_build_store(refs, SIZE, progress=False)
    blob = pickle.dumps(store)
    assert len(blob) < 2000  # no index, no descriptors
    np.testing.assert_array_equal(pickle.loads(blob)[4], store[4])


def test_parts_built_separately_equal_one_build(refs, tmp_path):
    root = tmp_path / "parts"
    root.mkdir()
    key = store_key(refs, SIZE)
    build_dir = partial_dir(root, key)
    for part in (1, 0, 2):  # any order: each process writes its own shard
        build_part(refs, SIZE, build_dir, part, 3, workers=1)
    finish(root, key, build_dir, len(refs), SIZE, 3)
    joined = store_mod.open_store(root, key, len(refs), SIZE)
    assert sorted(p.name for p in joined.path.iterdir()) == [
        "index.npy", "shard-000.bin", "shard-001.bin", "shard-002.bin"]
    assert not build_dir.exists()
    single = load_or_build_store(refs, SIZE, progress=False)
    np.testing.assert_array_equal(joined.decode_batch(range(8)), single.decode_batch(range(8)))


def test_zip_members_go_through_the_store(refs, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, r in enumerate(refs[:3]):
            z.write(r, f"cls/{i}.jpg")
    zrefs = [zip_ref(archive, f"cls/{i}.jpg") for i in range(3)]
    store = load_or_build_store(zrefs, SIZE, progress=False)
    plain = load_or_build_store(refs[:3], SIZE, progress=False)
    np.testing.assert_array_equal(store.decode_batch(range(3)), plain.decode_batch(range(3)))


def _build_in_child(refs, queue):
    queue.put(load_or_build_store(refs, SIZE, progress=False, workers=1).built)


def test_two_processes_build_once(refs):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_build_in_child, args=(refs, queue)) for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(timeout=60)
    assert sorted([queue.get(timeout=5), queue.get(timeout=5)]) == [False, True]
    assert [e.kind for e in cachedir.entries()] == ["store"]


def test_choose_store(monkeypatch):
    monkeypatch.setattr(cachedir, "room", lambda root=None: 10**9)
    monkeypatch.setenv("EASYCLS_CACHE_BUDGET_GB", "0.5")
    assert choose_store("auto", [(1000, 64), (200, 56)]) == "cache"
    # 20,000 images at 255 px: 3.9 GB as uint8 (over budget), about 0.65 GB as JPEGs
    assert choose_store("auto", [(20_000, 255)]) == "jpeg"
    assert choose_store("auto", [(200_000, 255)]) == "none"  # not even the store fits
    assert choose_store("cache", [(200_000, 255)]) == "cache"  # forced: its build checks space
    with pytest.raises(ValueError, match="auto, cache, jpeg, none"):
        choose_store("zarr", [(1, 8)])
    assert estimate_store_bytes(1000, 224) < 1000 * 224 * 224 * 3 / 4


def test_open_store_rejects_mismatch(refs):
    store = load_or_build_store(refs, SIZE, progress=False)
    root, key = store.path.parent, store.path.name.split(".")[0]
    assert store_mod.open_store(root, key, len(refs) + 1, SIZE) is None
    assert isinstance(store_mod.open_store(root, key, len(refs), SIZE), JpegStore)
