"""The cache folder through `fit` and the command line: a full disk exits 1 and leaves
nothing, the next run works; `easycls cache list` / `clear`; `--store`; row views that do not
copy the cache into memory."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_class_folders
from PIL import Image
from typer.testing import CliRunner

from easycls.cli import app
from easycls.config import TrainConfig
from easycls.data import cachedir
from easycls.data.loaders import Rows
from easycls.data.prepare import PreparedData, load_items
from easycls.data.storage import open_pixels

runner = CliRunner()
TINY = ["--arch", "resnet10t", "--no-pretrained", "--epochs", "1", "--size", "16", "--bs", "8",
        "--lr", "1e-3", "--quiet"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYCLS_CACHE", str(tmp_path / "cache"))


def _no_space(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_exits_1_leaves_nothing_and_the_next_run_works(tmp_path, monkeypatch):
    root = write_class_folders(tmp_path / "pets", per_class=6)
    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    result = runner.invoke(app, ["fit", str(root), "--out", str(tmp_path / "run"),
                                 "--store", "cache", *TINY])
    assert result.exit_code == 1, result.output
    assert "not enough disk space" in result.output and "EASYCLS_CACHE" in result.output
    assert [e.kind for e in cachedir.entries()] == []  # no partial file, nothing reserved
    monkeypatch.setattr(os, "posix_fallocate", real)
    cfg = TrainConfig(source=str(root), size=16, store="cache")
    data = PreparedData(load_items(cfg), cfg)
    assert data.store == "cache" and [e.kind for e in cachedir.entries()] == ["cache", "cache"]


def test_cache_is_an_alias_of_a_store_resolved_in_the_config(tmp_path):
    assert TrainConfig().store == "auto"
    assert TrainConfig(cache=True).store == "cache"
    assert TrainConfig().updated(cache=False).store == "none"
    assert TrainConfig(cache=False, store="jpeg").store == "jpeg"  # --store wins
    assert TrainConfig(cache=True).cache is None  # one setting decides: config.json says store
    TrainConfig(cache=True).to_json(tmp_path / "config.json")
    assert TrainConfig.from_json(tmp_path / "config.json").store == "cache"


def test_cache_list_and_clear(tmp_path):
    folder = write_class_folders(tmp_path / "img", per_class=3)
    refs = sorted(str(p) for p in folder.rglob("*.png"))
    cache = open_pixels(refs, 16, "cache", source="pets-data")
    store = open_pixels(refs, 16, "jpeg", source="pets-store")
    listed = runner.invoke(app, ["cache", "list"])
    assert listed.exit_code == 0
    assert cache.path.stem[:12] in listed.output and "pets-data" in listed.output
    assert "pets-store" in listed.output and "2 entries" in listed.output
    gone = runner.invoke(app, ["cache", "clear", cache.path.stem[:10]])
    assert "removed 1 entries" in gone.output and not cache.path.exists()
    assert "removed 0" in runner.invoke(app, ["cache", "clear", "--older-than", "1h"]).output
    assert store.path.exists()
    assert "removed 1 entries" in runner.invoke(app, ["cache", "clear"]).output
    assert cachedir.entries() == []


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_one_unreadable_image_does_not_copy_the_cache(tmp_path):
    root = tmp_path / "data"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(400):
            px = np.full((8, 8, 3), (c * 120 + i) % 256, np.uint8)
            Image.fromarray(px).save(root / f"c{c}" / f"{i}.png")
    (root / "c0" / "broken.png").write_bytes(b"not a png")
    cfg = TrainConfig(source=str(root), size=112, store="cache", augment=False)
    data = PreparedData(load_items(cfg), cfg)
    cache_bytes = 800 * 112 * 112 * 3
    assert len(data.table.skipped) == 1
    before = _rss()
    train, valid = data.datasets
    _ = train.pixels[0], valid.pixels[len(valid.pixels) - 1]
    assert isinstance(train.pixels.array, Rows) or isinstance(valid.pixels.array, Rows)
    assert _rss() - before < cache_bytes / 4  # a copy would be the whole 30 MB


@pytest.mark.slow
def test_fit_on_the_compact_store_says_so(tmp_path, capsys):
    root = write_class_folders(tmp_path / "pets", per_class=8)
    args = [a for a in TINY if a != "--quiet"]
    result = runner.invoke(app, ["fit", str(root), "--out", str(tmp_path / "run"),
                                 "--store", "jpeg", *args])
    assert result.exit_code == 0, result.output
    assert "pixels from the compact JPEG store" in result.output
    assert [e.kind for e in cachedir.entries()] == ["store", "store"]
