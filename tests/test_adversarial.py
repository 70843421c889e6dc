"""A hostile or unlucky user: crafted bundles, odd file names, a full disk, runs that collide.

Each numbered failure of the reliability issue has a test here (the number is in the test's
docstring); tests/test_bad_input.py and tests/test_checkpoint.py keep the cases that already
behaved (bad images, path traversal in CSVs, pickles in a checkpoint, signals).
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest
import timm
from conftest import color_image, write_class_folders
from typer.testing import CliRunner

import easycls
from easycls.bundle import BundleError, load, save_bundle
from easycls.cli import app
from easycls.data.storage import FORMATS

runner = CliRunner()
CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A valid run directory with a tiny timm model (no training needed)."""
    out = tmp_path_factory.mktemp("bundle") / "run"
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    save_bundle(model, out, arch="test_resnet", classes=CLASSES, size=32, mean=[0.5, 0.4, 0.3],
                std=[0.2, 0.2, 0.2], multi_label=False)
    return out


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    color_image(0, 3, np.random.default_rng(0)).save(path)
    return path


def _crafted(bundle, tmp_path, **changes):
    run = tmp_path / "crafted"
    shutil.copytree(bundle, run)
    meta = json.loads((run / "model.json").read_text())
    meta.update(changes)
    (run / "model.json").write_text(json.dumps(meta))
    return run


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


CRAFTED = [  # (change, key named in the error)
    (dict(arch="hf-hub:timm/resnet18.a1_in1k"), "'arch'"),
    (dict(arch="timm/resnet18"), "'arch'"),
    (dict(arch=["resnet18"]), "'arch'"),
    (dict(arch=7), "'arch'"),
    (dict(arch="no_such_net"), "'arch'"),
    (dict(std=[0, 0, 0]), "'std'"),
    (dict(std=[0.2, 0.2, float("nan")]), "'std'"),
    (dict(mean=[0.5, 0.5]), "'mean'"),
    (dict(mean="0.5"), "'mean'"),
    (dict(classes="ab"), "'classes'"),
    (dict(classes=["cat", "cat", "fox"]), "'classes'"),
    (dict(classes=["cat", 2, "fox"]), "'classes'"),
    (dict(input_size=1_000_000), "'input_size'"),
    (dict(input_size=4), "'input_size'"),
    (dict(input_size="32"), "'input_size'"),
    (dict(multi_label="yes"), "'multi_label'"),
    (dict(thresholds={"per_class": [0.5]}), "'thresholds.per_class'"),
    (dict(thresholds={"per_class": [0.5, 1.5, 0.5]}), "'thresholds.per_class'"),
    (dict(thresholds={"global": -1}), "'thresholds.global'"),
    (dict(thresholds=[0.5, 0.5, 0.5]), "'thresholds'"),
]


@pytest.mark.parametrize("change, key", CRAFTED,
                         ids=[f"{k}-{i}" for i, (_, k) in enumerate(CRAFTED)])
def test_crafted_model_json_is_refused_offline(bundle, tmp_path, no_network, change, key):
    """Failures 4 and 5: a crafted model.json never reaches the network, never builds a model
    from bad values; the error names the file, the key and the expected form."""
    run = _crafted(bundle, tmp_path, **change)
    with pytest.raises(BundleError, match=rf"{run / 'model.json'}: {key} must be ") as e:
        load(run)
    assert "\n" not in str(e.value) and "found" in str(e.value)


@pytest.mark.parametrize("text, what", [("{not json", "is not valid JSON"),
                                        ("[1, 2]", "must hold a JSON object"),
                                        ('{"arch": "test_resnet"}', "'classes' must be")])
def test_model_json_that_is_not_a_bundle(bundle, tmp_path, text, what):
    run = _crafted(bundle, tmp_path)
    (run / "model.json").write_text(text)
    with pytest.raises(BundleError, match=what):
        load(run)


def test_weights_that_do_not_fit_model_json(bundle, tmp_path):
    """Failure 5: lengths consistent with the weights, checked before loading them."""
    run = _crafted(bundle, tmp_path, classes=["cat", "dog", "fox", "emu"])
    with pytest.raises(BundleError,
                       match=r"model.safetensors: tensor '.*' has shape \[3, .*4 classes"):
        load(run)
    (run / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load(run)
    (run / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="holds no model.safetensors"):
        load(run)


def test_loading_and_predicting_never_touch_the_network(bundle, image, no_network, tmp_path):
    """Failure 4: no code path that loads a run directory reaches the network."""
    predictor = load(bundle, device="cpu")
    label, prob = predictor.predict(image)
    assert label in CLASSES and 0 <= prob <= 1
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(bundle), str(image), "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[0] == "file,label,probability"


@pytest.mark.parametrize("change", [dict(arch="hf-hub:timm/resnet18"), dict(std=[0, 0, 0]),
                                    dict(classes="ab"), dict(input_size=10**6)])
def test_cli_predict_on_a_crafted_bundle_fails_in_one_line(bundle, tmp_path, image, no_network,
                                                           change):
    """Failure 5: `easycls predict` prints the BundleError in one line and exits with 2."""
    run = _crafted(bundle, tmp_path, **change)
    result = runner.invoke(app, ["predict", str(run), str(image)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / 'model.json'}: "), lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["evaluate", "thresholds"])
def test_cli_evaluate_and_thresholds_on_a_crafted_bundle_fail_in_one_line(bundle, tmp_path,
                                                                          no_network, command):
    run = _crafted(bundle, tmp_path, arch="hf-hub:timm/resnet18", multi_label=True)
    data = write_class_folders(tmp_path / "pets", classes=("cat", "dog"), per_class=2)
    result = runner.invoke(app, [command, str(run), str(data)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {run / 'model.json'}: 'arch' must be "), lines


def test_undecodable_file_name_in_cache_key():
    """Failure 2: a name that is not UTF-8 (surrogateescape from os.listdir) hashes like any
    other."""
    bad = os.fsdecode(b"pets/cat/bad\xff.png")
    cache_key = FORMATS["cache"].key
    key = cache_key(["pets/cat/1.png", bad], 32)
    other = cache_key(["pets/cat/1.png", os.fsdecode(b"pets/cat/bad\xfe.png")], 32)
    assert len(key) == 64 and key != other


@pytest.mark.slow
def test_undecodable_file_name_is_trained_on_and_written_escaped(tmp_path, bundle):
    """Failure 2: a real file named b'bad\\xff.png' is read like any other image, and written out
    escaped in skipped.txt and the predictions CSV."""
    root = write_class_folders(tmp_path / "pets", classes=("cat", "dog"), per_class=8)
    odd = root / "cat" / os.fsdecode(b"bad\xff.png")
    color_image(0, 2, np.random.default_rng(1)).save(odd)
    (root / "dog" / os.fsdecode(b"broken\xfe.png")).write_bytes(b"not an image")
    learn = easycls.fit(str(root), arch="resnet18", pretrained=False, epochs=1, size=32, bs=8,
                        lr=1e-3, quiet=True, cache=True, out=str(tmp_path / "run"))
    refs = learn.dls.train_ds.pixels.refs + learn.dls.valid_ds.pixels.refs
    assert str(odd) in refs and len(refs) == 17
    skipped = (tmp_path / "run" / "skipped.txt").read_bytes().decode("utf-8")
    assert skipped.endswith("dog/broken\\xfe.png\tnot an image\n")
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(tmp_path / "run"), str(root / "cat"),
                                 "--csv", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert "bad\\xff.png" in text and len(text.splitlines()) == 10


# ---- CSVs and zips a user (or an attacker) may hand over --------------------------------------


def _png_bytes(ci: int) -> bytes:
    import io
    buf = io.BytesIO()
    color_image(ci, 2, np.random.default_rng(ci)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("newline, sep, bom", [("\r\n", ";", True), ("\n", ";", False),
                                               ("\r\n", ",", True), ("\r\n", "\t", False)])
def test_csv_with_bom_crlf_and_semicolons(tmp_path, newline, sep, bom):
    from easycls.data.sources import from_path
    images = write_class_folders(tmp_path / "images", classes=("cat", "dog"), per_class=2)
    rows = ["file" + sep + "label"] + [f"{c}/{c}_{i}.png{sep}{c}" for c in ("cat", "dog")
                                        for i in range(2)]
    data = newline.join(rows) + newline
    (tmp_path / "labels.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
    table = from_path(tmp_path / "labels.csv", images)
    assert table.classes == ["cat", "dog"] and len(table.refs) == 4
    assert all(os.path.isfile(r) for r in table.refs)


def test_zip_members_outside_the_archive_root_are_never_used(tmp_path):
    import zipfile

    from easycls.data.sources import from_path
    with zipfile.ZipFile(tmp_path / "pets.zip", "w") as z:
        for ci, c in enumerate(("cat", "dog")):
            for i in range(2):
                z.writestr(f"{c}/{i}.png", _png_bytes(ci))
        z.writestr("../evil.png", _png_bytes(0))
        z.writestr("cat/../../evil2.png", _png_bytes(0))
        z.writestr("/abs/evil3.png", _png_bytes(0))  # once a class named ''
    table = from_path(tmp_path / "pets.zip")
    assert table.classes == ["cat", "dog"] and len(table.refs) == 4
    assert not any("evil" in r for r in table.refs)
    # skipped and recorded (skipped.txt), not dropped silently
    assert sorted(r.rsplit("/", 1)[-1] for r, _ in table.skipped) == [
        "evil.png", "evil2.png", "evil3.png"]
    assert all("outside the archive" in why for _, why in table.skipped)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.zip"]  # nothing extracted


def test_zip_bomb_member_is_skipped_without_inflating_it(tmp_path, monkeypatch):
    import zipfile

    from easycls.data import images
    with zipfile.ZipFile(tmp_path / "pets.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("cat/0.png", _png_bytes(0))
        z.writestr("cat/bomb.png", b"\0" * (40 << 20))  # 40 MB of zeros: about 40 kB zipped
    real_read = zipfile.ZipFile.read

    def read(self, name, *a, **k):
        assert "bomb" not in str(name), "the bomb was inflated"
        return real_read(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "read", read)
    refs = [images.zip_ref(tmp_path / "pets.zip", m) for m in ("cat/0.png", "cat/bomb.png")]
    bad = images.check_images(refs)
    assert list(bad) == [1] and bad[1].startswith("too large: 41943040 bytes uncompressed")


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    from PIL import Image

    from easycls.data import images
    path = tmp_path / "bomb.png"
    color_image(0, 2, np.random.default_rng(0), size=64).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    assert images.check_images([str(path)])[0].startswith("too large: ")


@pytest.mark.parametrize("args, says", [
    (["--arch", "resnet181"], "resnet181"),
    (["--mixed-precision", "fp8"], "mixed_precision"),
    (["--epochs", "99999999999999999999"], "epochs"),
    (["--size", "100000"], "size"),
])
def test_cli_bad_options_are_refused_before_the_data_is_read(tmp_path, args, says):
    """Failure 7 (checked in depth by tests/test_config.py): one line, exit 2, and the source,
    which does not exist, is never looked at."""
    result = runner.invoke(app, ["fit", str(tmp_path / "not-there"), "--no-pretrained", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.output
    assert "not-there" not in result.output and "Traceback" not in result.output
