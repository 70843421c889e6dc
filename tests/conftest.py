"""Shared fixtures: isolated caches, and tiny generated image datasets."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Keep tests off the user's caches and off the network, whatever the order of imports.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("EASYCLS_CACHE", str(base / "cache"))
    monkeypatch.setenv("EASYCLS_DATA_HOME", str(base / "datasets"))
    monkeypatch.setenv("EASYCLS_DATA", str(base / "data"))


def two_builders(kind: str, refs: list[str], size: int) -> list[bool]:
    """Two processes build the same entry at once through `open_pixels`, as two jobs on one
    machine would; whether each built it, sorted (one builds, the other waits and reuses)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_build_slowly, args=(kind, refs, size, queue))
                for _ in range(2)]
    for c in children:
        c.start()
    for c in children:
        c.join(timeout=60)
    return sorted([queue.get(timeout=5), queue.get(timeout=5)])


def _build_slowly(kind: str, refs: list[str], size: int, queue) -> None:
    """In a child process: `open_pixels` as `fit` calls it, each part slowed so that a second
    builder surely comes to the lock while this one builds; puts whether this call built."""
    import time

    from easycls.data import storage
    fmt = storage.FORMATS[kind]
    real = fmt.build_part

    def slow(*args, **kw):
        time.sleep(0.5)
        return real(*args, **kw)

    fmt.build_part = slow
    queue.put(storage.open_pixels(refs, size, kind).built)


def color_image(
    label_index: int, n_classes: int, rng: np.random.Generator, size: int = 24
) -> Image.Image:
    """A noisy image whose mean colour encodes its class: learnable in one epoch."""
    hue = np.array(
        [(label_index * 97) % 256, (label_index * 57 + 80) % 256, (label_index * 31 + 160) % 256]
    )
    pixels = np.clip(hue + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def label_mosaic(labels: list[str], names: list[str], rng: np.random.Generator) -> Image.Image:
    """Quadrant k lit in colour k when `names[k]` is in `labels`: learnable multi-label images
    (up to 4 names)."""
    img = np.clip(rng.normal(30, 10, (32, 32, 3)), 0, 255)
    for k, name in enumerate(names):
        if name in labels:
            r, c = divmod(k, 2)
            img[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16, k % 3] = 230
    return Image.fromarray(img.astype(np.uint8))


LABELS = ["a", "b", "c", "d"]


def write_multilabel(root: Path, n: int = 64, seed: int = 0) -> Path:
    """train.csv (ImageID,Labels) and images whose lit quadrants are their labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    lines = ["ImageID,Labels"]
    for i in range(n):
        labels = sorted(rng.choice(LABELS, size=rng.integers(1, 3), replace=False).tolist())
        label_mosaic(labels, LABELS, rng).save(root / "images" / f"{i}.png")
        lines.append(f"{i}.png,{' '.join(labels)}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def fit_multilabel(tmp_path_factory, name: str, **settings):
    """(learn, run_dir, data root) of a multi-label run on `write_multilabel`'s images."""
    import easycls
    root = write_multilabel(tmp_path_factory.mktemp("ml") / "data")
    out = tmp_path_factory.mktemp("runs") / name
    learn = easycls.fit(str(root / "train.csv"), images=str(root / "images"), out=str(out),
                        **settings)
    return learn, out, root


def write_class_folders(
    root: Path, classes=("cat", "dog", "fox"), per_class: int = 12, seed: int = 0, ext: str = ".png"
) -> Path:
    """`root/<class>/<i>.<ext>` colour-coded images."""
    rng = np.random.default_rng(seed)
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            color_image(ci, len(classes), rng).save(root / name / f"{name}_{i}{ext}")
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    return write_class_folders(tmp_path / "pets")


@pytest.fixture
def split_folders(tmp_path) -> Path:
    root = tmp_path / "split"
    write_class_folders(root / "train", per_class=12, seed=1)
    write_class_folders(root / "valid", per_class=4, seed=2)
    write_class_folders(root / "test" / "unlabelled_dump", classes=("x",), per_class=5, seed=3)
    return root


TINY = dict(arch="resnet18", pretrained=False, epochs=1, size=32, bs=8, lr=1e-3, quiet=True)


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """The embedded digits dataset (train/ and valid/ class folders), written once per session."""
    from easycls.data.builtin import materialize
    return materialize("digits", tmp_path_factory.mktemp("digits-data"))


@pytest.fixture(scope="session")
def digits_run(digits_folder, tmp_path_factory) -> Path:
    """One tiny trained digits run (test_resnet, 1 epoch, 32 px), shared by the slow tests."""
    import easycls
    out = tmp_path_factory.mktemp("runs") / "digits-test_resnet"
    easycls.fit(str(digits_folder), out=str(out),
                **{**TINY, "arch": "test_resnet", "lr": 3e-3, "bs": 32})
    return out


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 API on a free localhost port: moto's server, one per test session."""
    import socket

    from moto.server import ThreadedMotoServer
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """The environment pointing at the S3 server, and a boto3 client of it."""
    import boto3
    for name, value in dict(AWS_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="testing",
                            AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                            EASYCLS_REMOTE_RETRIES="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client("s3", endpoint_url=s3_endpoint)


def upload_folder(client, folder: Path, bucket: str, prefix: str) -> str:
    """Every file under `folder` into a new `bucket` under `prefix`; the `s3://` URL."""
    client.create_bucket(Bucket=bucket)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}"


@contextmanager
def signal_at(monkeypatch, signum: int, when: Callable) -> Iterator[None]:
    """Inside: this process gets `signum` (a user's Ctrl-C, a scheduler's SIGTERM) after the
    first training batch for which `when(checkpointer)` is true (it reads `epoch`, `iter`,
    `phase`), before the checkpointer sees that batch end."""
    from easycls import checkpoint
    real = checkpoint.Checkpointer.after_batch

    def after_batch(self):
        if self.training and when(self):
            os.kill(os.getpid(), signum)
        return real(self)

    monkeypatch.setattr(checkpoint.Checkpointer, "after_batch", after_batch)
    try:
        yield
    finally:
        monkeypatch.setattr(checkpoint.Checkpointer, "after_batch", real)
