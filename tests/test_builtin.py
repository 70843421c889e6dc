"""Tests for easycls.data.builtin: offline digits datasets, built once and atomically."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from easycls.data import builtin
from easycls.data.builtin import BUILTIN, data_home, describe, materialize
from easycls.data.tables import read_label_csv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return materialize("digits", tmp_path_factory.mktemp("a"))


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory) -> Path:
    return materialize("digits-multilabel", tmp_path_factory.mktemp("a"))


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


def test_data_home_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EASYCLS_DATA_HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home"
    monkeypatch.delenv("EASYCLS_DATA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "easycls" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_home() == tmp_path / ".cache" / "easycls" / "datasets"


def test_default_root_is_data_home(monkeypatch, tmp_path, digits):
    monkeypatch.setenv("EASYCLS_DATA_HOME", str(tmp_path))
    assert materialize("digits") == tmp_path / "digits"
    assert files(tmp_path / "digits") == files(digits)


def test_unknown_name_and_descriptions():
    with pytest.raises(ValueError, match="digits-multilabel"):
        materialize("mnist")
    for name in BUILTIN:
        text = describe(name)
        assert text.startswith(name) and "\n" not in text


def test_digits_counts_and_classes(digits):
    counts = {}
    for split in ("train", "valid"):
        per_class = {d.name: len(list(d.glob("*.png"))) for d in (digits / split).iterdir()}
        assert sorted(per_class) == [str(i) for i in range(10)]
        assert max(per_class.values()) - min(per_class.values()) <= 0.1 * sum(per_class.values())
        counts[split] = sum(per_class.values())
    assert counts == {"train": 1437, "valid": 360}
    assert sorted(p.name for p in digits.iterdir() if not p.name.startswith(".")) == [
        "train",
        "valid",
    ]


def test_digits_images_are_32px_rgb_and_match_sklearn(digits):
    from sklearn.datasets import load_digits

    data = load_digits()
    for path in sorted((digits / "valid").rglob("*.png"))[:20]:
        idx = int(path.stem)
        assert data.target[idx] == int(path.parent.name)
        image = Image.open(path)
        assert (image.size, image.mode) == ((32, 32), "RGB")
        small = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), float)
        # the 8x8 original and the downsampled 32x32 agree up to interpolation blur
        assert np.corrcoef(small.ravel(), data.images[idx].ravel())[0, 1] > 0.9


def test_split_is_fixed_across_roots(tmp_path, digits):
    again = materialize("digits", tmp_path)
    assert files(again) == files(digits)


def mosaic_rows(root: Path, split: str):
    table = read_label_csv(root / f"{split}.csv")
    samples = [
        [int(s) for s in re.search(r"from samples ([\d, ]+)$", c).group(1).split(", ")]
        for c in table.extra["Caption"]
    ]
    return table, samples


def test_multilabel_counts_and_label_shape(mosaics):
    sizes = {}
    for split in ("train", "valid"):
        table, samples = mosaic_rows(mosaics, split)
        sizes[split] = len(table)
        assert all(1 <= len(labels) <= 4 for labels in table.labels)
        assert all(2 <= len(s) <= 4 for s in samples)
        per_label = Counter(label for labels in table.labels for label in labels)
        assert sorted(per_label) == [str(i) for i in range(10)]
        assert min(per_label.values()) > 0.7 * max(per_label.values())
    assert sizes == {"train": 3000, "valid": 600}
    assert len(list((mosaics / "images").glob("*.png"))) == 3600


def test_multilabel_labels_and_pixels_match_the_digits_used(mosaics):
    images, targets = builtin._digits()
    split = builtin._split()
    for name in ("train", "valid"):
        table, samples = mosaic_rows(mosaics, name)
        # no leakage: every digit comes from its own split
        assert set(np.concatenate([np.array(s) for s in samples])) <= set(split[name].tolist())
        for file, labels, used in list(zip(table.files, table.labels, samples, strict=True))[:40]:
            assert labels == sorted({str(targets[s]) for s in used})
            pixels = np.asarray(Image.open(mosaics / "images" / file).convert("L"))
            assert pixels.shape == (64, 64)
            cells = [
                pixels[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32] for r in (0, 1) for c in (0, 1)
            ]
            filled = [cell for cell in cells if cell.any()]
            assert len(filled) == len(used)
            for cell, sample in zip(filled, used, strict=True):
                np.testing.assert_array_equal(cell, images[sample])


def test_multilabel_csv_defeats_pandas_like_the_course_file(mosaics):
    pd = pytest.importorskip("pandas")
    ids = read_label_csv(mosaics / "train.csv").files
    try:
        frame = pd.read_csv(mosaics / "train.csv")
    except pd.errors.ParserError:
        return
    # Without an error pandas turns the surplus fields into an index: the ids come out wrong.
    assert frame["ImageID"].astype(str).tolist() != ids


def test_reuse_does_not_rewrite(digits, monkeypatch):
    marker = digits / builtin.MARKER
    png = next((digits / "train" / "3").glob("*.png"))
    before = (marker.stat().st_mtime_ns, png.stat().st_mtime_ns)

    def fail(*args):
        raise AssertionError("rebuilt a complete dataset")

    monkeypatch.setattr(builtin, "_build", fail)
    assert materialize("digits", digits.parent) == digits
    assert (marker.stat().st_mtime_ns, png.stat().st_mtime_ns) == before


def test_leftover_temp_dir_from_a_crash_is_ignored(tmp_path):
    crashed = tmp_path / ".digits-multilabel.tmp-crashed"
    (crashed / "images").mkdir(parents=True)
    (crashed / "train.csv").write_text("ImageID,Labels,Caption\n0.png,1,half written")
    root = materialize("digits-multilabel", tmp_path)
    assert len(read_label_csv(root / "train.csv")) == 3000
    assert not crashed.exists()  # cleaned under the lock
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not made by easycls"):
        materialize("digits", tmp_path)
    assert (tmp_path / "digits" / "mine.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_stale_format_is_rebuilt(tmp_path):
    root = materialize("digits", tmp_path)
    marker = root / builtin.MARKER
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "format": info["format"] - 1}))
    (root / "train" / "junk.png").write_bytes(b"")
    assert materialize("digits", tmp_path) == root
    assert json.loads(marker.read_text())["format"] == builtin.FORMAT
    assert not (root / "train" / "junk.png").exists()


def test_two_processes_racing_build_one_complete_copy(tmp_path):
    code = ("import sys; from easycls.data.builtin import materialize; "
            "print(materialize('digits', sys.argv[1]))")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(tmp_path / "digits")] * 2
    assert len(files(tmp_path / "digits")) == 1797
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
