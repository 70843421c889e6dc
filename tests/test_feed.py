"""Batch-level loading (`FeedDL`): same batches as fastai's item-by-item loader, clean threads,
JPEG batch decoding, the per-rank worker budget and the loader timing callback."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from conftest import color_image
from fastai.data.core import TfmdDL
from fastai.torch_core import TensorCategory, TensorImage, TensorMultiCategory
from PIL import Image

from easycls.callbacks import LoaderTiming
from easycls.data.feed import ArrayGather, FeedDL, ItemGather, JpegGather, batch_gather
from easycls.data.jpeg import decode_jpegs
from easycls.data.loaders import ImageDataset, Pixels
from easycls.data.prefetch import Prefetcher
from easycls.distributed import TrainShardsDL
from easycls.job import worker_budget


def _cached(n=37, side=12, multi=False, seed=0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    targets = (rng.random((n, 4)) > 0.5).astype(np.float32) if multi else np.arange(n) % 3
    return ImageDataset(Pixels([f"img{i}" for i in range(n)], side, array), targets, multi, 0)


def _pairs(a, b):
    got_a, got_b = list(a), list(b)
    assert len(got_a) == len(got_b) > 0
    return zip(got_a, got_b)


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("easycls-")]


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("shuffle,drop_last", [(True, True), (True, False), (False, False)])
def test_same_batches_as_the_item_by_item_loader(multi, shuffle, drop_last):
    ds = _cached(multi=multi)
    old = TfmdDL(ds, bs=8, shuffle=shuffle, drop_last=drop_last)
    new = FeedDL(ds, bs=8, shuffle=shuffle, drop_last=drop_last)
    old.rng.seed(7)
    new.rng.seed(7)  # the same seed gives the same order: fastai's get_idxs is kept
    assert new.batch_level
    for (xa, ya), (xb, yb) in _pairs(old, new):
        assert type(xb) is TensorImage and type(yb) is type(ya)
        assert type(yb) is (TensorMultiCategory if multi else TensorCategory)
        assert xb.dtype == torch.uint8 and torch.equal(xa, xb)
        assert ya.dtype == yb.dtype and torch.equal(ya, yb)
        assert xb.is_contiguous(memory_format=torch.channels_last)  # the NHWC block, no copy
    assert not _feed_threads()


def test_same_shards_under_the_ddp_wrapper():
    ds = _cached(n=40)
    for rank in (0, 1):
        old, new = (
            TfmdDL(ds, bs=4, shuffle=True, drop_last=True),
            FeedDL(ds, bs=4, shuffle=True, drop_last=True),
        )
        old.rng.seed(3)
        new.rng.seed(3)
        # world 2 without a process group: the broadcast is the identity, the sharding is real
        for (xa, ya), (xb, yb) in _pairs(TrainShardsDL(old, rank, 2), TrainShardsDL(new, rank, 2)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_new_and_after_batch_keep_the_settings():
    ds = _cached()
    dl = FeedDL(ds, bs=8, workers=3, prefetch=1, after_batch=[lambda b: b * 0])
    copy = dl.new(shuffle=False)
    assert type(copy) is FeedDL and (copy.workers, copy.prefetch) == (3, 1)
    x, _ = copy.one_batch()
    assert x.shape == (8, 3, 12, 12) and int(x.sum()) == 0  # after_batch still runs
    assert FeedDL(ds, bs=8, num_workers=5).workers == 5  # fastai's name for the same thing


def test_a_dataset_without_pixels_loads_item_by_item():
    items = [
        (TensorImage(torch.full((3, 4, 4), i, dtype=torch.uint8)), TensorCategory(i))
        for i in range(10)
    ]
    dl = FeedDL(items, bs=4)
    assert not dl.batch_level and batch_gather(items, torch.device("cpu")) is None
    xb, yb = dl.one_batch()
    assert xb.shape == (4, 3, 4, 4) and yb.tolist() == [0, 1, 2, 3]


def test_a_batch_kept_by_the_caller_is_never_overwritten():
    ds = _cached(n=64)
    dl = FeedDL(ds, bs=8, shuffle=False)
    kept = [x.clone() for x, _ in dl]
    # every batch alive at once: the reused host blocks must not be handed out twice
    held = list(dl)
    for (x, _), want in zip(held, kept):
        assert torch.equal(x, want)
    ptrs = {x.data_ptr() for x, _ in held}
    assert len(ptrs) == len(held)


def test_prefetch_thread_stops_when_the_loop_stops_early():
    dl = FeedDL(_cached(n=200), bs=4, shuffle=True, prefetch=2)
    it = iter(dl)
    next(it)
    assert _feed_threads()  # running ahead
    del it  # fastai's one_batch abandons the loop this way
    assert not _feed_threads()
    dl.one_batch()
    assert not _feed_threads()


def test_prefetcher_hands_errors_over_and_closes():
    def source():
        yield 1
        raise ValueError("broken item")

    with Prefetcher(source(), depth=1) as items, pytest.raises(ValueError, match="broken item"):
        list(items)
    endless = Prefetcher(iter(int, 1), depth=2)  # never ends; its queue fills and blocks
    assert next(iter(endless)) == 0
    endless.close()
    assert not endless.alive


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_decode_jpegs_on_cpu_matches_pil():
    rng = np.random.default_rng(0)
    shapes = [(24, 24), (24, 40), (40, 24)]  # short side 24, as the store keeps it
    blobs = [_jpeg(color_image(i, 3, rng, 64).resize(s[::-1])) for i, s in enumerate(shapes)]
    got = decode_jpegs(blobs, 24, "cpu", workers=2)
    assert got.shape == (3, 3, 24, 24) and got.dtype == torch.uint8
    for blob, (h, w), x in zip(blobs, shapes, got):
        ref = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        top, left = (h - 24) // 2, (w - 24) // 2
        ref = ref[top:top + 24, left:left + 24].transpose(2, 0, 1).astype(int)
        # libjpeg builds may round differently
        assert np.abs(x.numpy().astype(int) - ref).max() <= 2


def test_jpeg_store_row_views_and_decoded_refs_batch_like_items(tmp_path):
    from easycls.data.loaders import Rows
    from easycls.data.storage import open_pixels
    rng = np.random.default_rng(1)
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"{i}.png"))
        color_image(i % 3, 3, rng, 20).save(paths[-1])
    store = open_pixels(paths, 16, "jpeg", root=tmp_path / "cache").pixels
    rows = [0, 2, 3, 5, 6, 7, 8, 11, 4, 1]  # kept items, as after dropping unreadable ones
    arr = np.stack([store[i] for i in range(12)])
    kept, nested = [paths[r] for r in rows], [9, 0, 1, 2, 3]
    cases = {"store": Pixels(paths, 16, store), "store rows": Pixels(kept, 16, Rows(store, rows)),
             "cache rows": Pixels(kept, 16, Rows(arr, rows)),
             "nested rows": Pixels([kept[r] for r in nested], 16, Rows(Rows(arr, rows), nested)),
             "decoded refs": Pixels(paths, 16)}
    kinds = {"store": JpegGather, "store rows": JpegGather, "cache rows": ArrayGather,
             "nested rows": ArrayGather, "decoded refs": ItemGather}
    for name, px in cases.items():
        ds = ImageDataset(px, np.arange(len(px)) % 3, False, 1)
        assert isinstance(batch_gather(ds, torch.device("cpu"), workers=2), kinds[name]), name
        for (xa, ya), (xb, yb) in _pairs(TfmdDL(ds, bs=4), FeedDL(ds, bs=4, workers=2)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb), name


def test_gpu_store_decoding_fills_unreadable_images_with_zeros(monkeypatch):
    """The nvJPEG branch, run with the CPU decoder standing in for the GPU one."""
    from easycls.data import feed
    rng = np.random.default_rng(2)
    good = _jpeg(color_image(1, 3, rng, 8))

    class Store:
        size = 8

        def __len__(self):
            return 3

        def read(self, idxs):
            return [good if i != 1 else b"" for i in idxs]

    monkeypatch.setattr(feed, "decode_jpegs", lambda blobs, size, device: decode_jpegs(blobs, size))
    gather = JpegGather(Store(), torch.device("cpu"))
    x = gather._gpu(Store().read([0, 1, 2]))
    assert x.shape == (3, 3, 8, 8) and int(x[1].sum()) == 0 and int(x[0].sum()) > 0
    assert torch.equal(x[0], x[2])


@pytest.mark.parametrize("cores,local,want", [(16, 8, 1), (16, 1, 15), (2, 1, 1), (64, 4, 15),
                                              (128, 1, 16), (4, 8, 1), (32, 2, 15)])
def test_worker_budget(cores, local, want):
    assert worker_budget(cores, local) == want


def test_worker_budget_reads_the_local_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert worker_budget(cores=16) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert worker_budget(cores=16) == 1  # unknown: every rank taken as local


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_loader_timing_with_a_fake_clock():
    clock = _Clock()
    timing = LoaderTiming(skip=1, sync=False, clock=clock)
    timing.learn = type("L", (), {"training": True, "yb": (torch.zeros(4),), "iter": 0})()
    timing.before_train()
    for i, (wait, step) in enumerate([(5.0, 1.0), (0.1, 1.0), (0.3, 2.0)]):
        timing.learn.iter = i
        clock.now += wait
        timing.before_batch()
        clock.now += step
        timing.after_batch()
    s = timing.summary()  # the first batch (thread start, warm-up) is left out
    assert s["steps"] == 2 and s["wait_seconds"] == pytest.approx(0.2)
    assert s["step_seconds"] == pytest.approx(1.5)
    assert s["wait_fraction"] == pytest.approx(0.2 / 1.5)
    assert s["images_per_s"] == pytest.approx(8 / 3.4)


def test_datasets_whose_items_are_not_the_pixel_rows_load_item_by_item():
    ds = _cached(n=6)

    class TL:
        def __init__(self, items):
            self.items = items

    class Wrapped:  # a fastai Datasets-like object: items are what the pixels are read for
        pixels, targets = ds.pixels, ds.targets

        def __init__(self, items):
            self.tls = [TL(items)]

        def __len__(self):
            return 6

    assert batch_gather(Wrapped(list(range(6))), torch.device("cpu")) is not None
    assert batch_gather(Wrapped([f"{i}.jpg" for i in range(6)]), torch.device("cpu")) is None
    assert batch_gather(Wrapped([5, 4, 3, 2, 1, 0]), torch.device("cpu")) is None


def test_device_smooth_loss_records_what_fastai_records():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    from easycls.callbacks import DeviceSmoothLoss
    ds = _cached(n=48, side=8)
    from fastai.data.transforms import IntToFloatTensor
    tfms = [IntToFloatTensor()]

    def run(cbs):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
        dl = FeedDL(ds, bs=8, shuffle=True, after_batch=tfms)
        dl.rng.seed(1)
        learn = Learner(DataLoaders(dl, FeedDL(ds, bs=16, after_batch=tfms)), model,
                        loss_func=torch.nn.CrossEntropyLoss(), cbs=cbs)
        with learn.no_bar(), learn.no_logging():
            learn.fit(2, 1e-2)
        return learn

    plain, lazy = run([]), run([DeviceSmoothLoss(always=True)])
    assert len(lazy.recorder.losses) == len(plain.recorder.losses) == 12
    assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in lazy.recorder.losses)
    assert torch.allclose(torch.stack(lazy.recorder.losses), torch.stack(plain.recorder.losses))
    assert np.allclose(
        np.array(lazy.recorder.values, float), np.array(plain.recorder.values, float)
    )
    assert type(lazy.recorder.smooth_loss).__name__ == "AvgSmoothLoss"  # fastai's, back after fit


def test_batches_reach_the_model_in_its_memory_format():
    from types import SimpleNamespace

    import torch

    from easycls.callbacks import ChannelsLastAuto

    nhwc = torch.zeros(2, 8, 8, 3).permute(0, 3, 1, 2)  # a uint8 store's batch, viewed NCHW
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    learn = SimpleNamespace(xb=(nhwc,), model=torch.nn.Conv2d(3, 4, 3),
                            dls=SimpleNamespace(device=torch.device("cpu")))
    cb = ChannelsLastAuto()
    cb.learn = learn
    cb.before_fit()  # CPU, no depthwise convolution: the model stays contiguous
    cb.before_batch()
    assert learn.xb[0].is_contiguous() and torch.equal(learn.xb[0], nhwc)
    forced = ChannelsLastAuto(True)
    forced.learn = learn
    forced.before_fit()
    forced.before_batch()
    assert learn.xb[0].is_contiguous(memory_format=torch.channels_last)
