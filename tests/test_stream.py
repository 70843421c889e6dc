"""The streaming store: built once into object storage (moto's S3 server), streamed through a
bounded local cache."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from conftest import TINY, signal_at, write_class_folders

import easycls
from easycls.data import remote, storage
from easycls.data.items import DataError


@pytest.fixture
def streams(s3, monkeypatch):
    """``$EASYCLS_STREAM_DIR`` in a new bucket, with small chunks; the bucket's name."""
    remote.forget()
    bucket = f"s-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("EASYCLS_STREAM_DIR", f"s3://{bucket}/streams")
    monkeypatch.setenv("EASYCLS_STREAM_CHUNK_MB", "0.01")
    yield bucket
    remote.forget()


class _Peak:
    """The largest size the cache folder reached while a block ran (sampled in a thread)."""

    def __init__(self, root: Path):
        self.root, self.peak, self._stop = root, 0, threading.Event()

    def _size(self) -> int:
        total = 0
        for p in self.root.rglob("*"):
            try:
                total += p.stat().st_size if p.is_file() else 0
            except OSError:
                pass  # evicted while we looked
        return total

    def __enter__(self):
        def watch():
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, self._size())
        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())


@pytest.mark.slow  # two epochs of a stream read through a 100 kB cache
def test_a_stream_larger_than_the_cache_trains_within_the_cap(streams, s3, tmp_path,
                                                               monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EASYCLS_CACHE", str(cache))
    monkeypatch.setenv("EASYCLS_CACHE_MAX_GB", "0.0001")  # 100 kB
    folder = write_class_folders(tmp_path / "pets", per_class=40)
    with _Peak(cache) as seen:
        learn = easycls.fit(str(folder), out=str(tmp_path / "run"), store="stream",
                            **{**TINY, "arch": "test_resnet", "epochs": 2})
    listed = s3.list_objects_v2(Bucket=streams, Prefix="streams/")["Contents"]
    stored = sum(o["Size"] for o in listed)
    assert stored > 100_000  # the stream is larger than the whole cache cap
    assert 0 < seen.peak <= 100_000, seen.peak
    assert learn.easycls.metrics["n_valid"] == 24
    assert learn.easycls.metrics["accuracy"] > 0.5


def test_the_stream_is_built_once_and_read_again(streams, s3, tmp_path):
    folder = write_class_folders(tmp_path / "pets", classes=("a", "b"), per_class=6)
    refs = sorted(str(p) for p in folder.rglob("*.png"))
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    refs.append(str(folder / "a" / "broken.png"))
    first = storage.open_pixels(refs, 32, "stream")
    again = storage.open_pixels(refs, 32, "stream")
    assert first.built and not again.built
    assert first.failures == again.failures == {12: "not an image"}
    jpeg = storage.open_pixels(refs, 32, "jpeg").pixels
    assert (first.pixels[[0, 5, 11]] == jpeg[[0, 5, 11]]).all()  # the compact store's JPEGs
    manifests = [o["Key"] for o in s3.list_objects_v2(Bucket=streams)["Contents"]
                 if o["Key"].endswith("easycls.json")]
    assert len(manifests) == 1
    meta = json.loads(s3.get_object(Bucket=streams, Key=manifests[0])["Body"].read())
    assert (meta["n"], meta["size"], sum(meta["chunks"])) == (13, 32, 13)


def test_a_cap_smaller_than_a_few_chunks_is_one_clear_line(streams, tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_CACHE_MAX_GB", "0.00002")  # 20 kB: two 10 kB chunks
    folder = write_class_folders(tmp_path / "pets", classes=("a", "b"), per_class=20)
    refs = sorted(str(p) for p in folder.rglob("*.png"))
    with pytest.raises(DataError, match="EASYCLS_CACHE_MAX_GB.*EASYCLS_STREAM_CHUNK_MB"):
        storage.open_pixels(refs, 32, "stream")


@pytest.mark.slow  # two full runs compared row by row
def test_sigterm_mid_epoch_then_resume_of_a_stream_matches_an_uninterrupted_run(
        streams, tmp_path, monkeypatch):
    import csv
    import signal

    from easycls.checkpoint import TrainingInterrupted
    monkeypatch.setenv("EASYCLS_CACHE_MAX_GB", "0.0001")  # the cache holds a few chunks
    data = write_class_folders(tmp_path / "pets", per_class=20)
    exact = {**TINY, "arch": "test_resnet", "epochs": 3, "seed": 3, "store": "stream"}
    easycls.fit(str(data), out=str(tmp_path / "ref"), **exact)
    with signal_at(monkeypatch, signal.SIGTERM, lambda c: (c.epoch, c.iter) == (1, 2)), \
            pytest.raises(TrainingInterrupted):
        easycls.fit(str(data), out=str(tmp_path / "run"), **exact)
    easycls.fit(resume=str(tmp_path / "run"), quiet=True)

    def rows(run):  # every column but the wall-clock seconds
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in csv.DictReader((tmp_path / run / "history.csv").open())]
    assert len(rows("run")) == 3 and rows("run") == rows("ref")


def test_storage_lost_mid_epoch_is_retried_then_one_clear_line(tmp_path, monkeypatch):
    """A server that goes away while the chunks are read: bounded retries, then a RemoteError
    (a one-line user error: the run stops and its last checkpoint stays)."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in dict(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="x",
                            AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
                            AWS_MAX_ATTEMPTS="1", EASYCLS_REMOTE_RETRIES="1",
                            EASYCLS_STREAM_DIR="s3://lost/streams",
                            EASYCLS_STREAM_CHUNK_MB="0.01").items():
        monkeypatch.setenv(name, value)
    remote.forget()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="lost")
    folder = write_class_folders(tmp_path / "pets", classes=("a", "b"), per_class=20)
    refs = sorted(str(p) for p in folder.rglob("*.png"))
    store = storage.open_pixels(refs, 32, "stream").pixels
    assert len(store.chunks) > 2 and store.read([0])[0]  # the first chunk is here
    server.stop()
    with pytest.raises(remote.RemoteError, match=rf"127.0.0.1:{port} \(after 2 tries\)"):
        store.read([len(refs) - 1])  # in the last chunk, not downloaded yet
    remote.forget()
