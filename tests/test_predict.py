"""`Predictor.stream` and `predict_files`: threaded decoding ahead of the model, each file read
once, unreadable files skipped and reported, results in input order."""

import numpy as np
import pytest
import timm
from PIL import Image

from easycls import bundle as bundle_mod
from easycls.bundle import load, save_bundle
from easycls.data.images import UnreadableImage
from easycls.predict import predict_files, write_submission

SIZE = 32


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    save_bundle(model, out, arch="resnet10t", classes=["a", "b", "c"], size=SIZE,
                mean=[0.5] * 3, std=[0.25] * 3)
    return load(out, device="cpu")


@pytest.fixture
def files(tmp_path):
    refs = []
    for i in range(11):
        a = np.random.default_rng(i).integers(0, 256, (40 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        refs.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    return refs[:4] + [str(tmp_path / "bad.jpg")] + refs[4:]


def test_stream_matches_one_by_one_and_skips_unreadable(predictor, files):
    seen, probs, bad = [], [], {}
    for where, p, failed in predictor.stream(files, bs=3, workers=2):
        seen += where
        probs.append(p)
        bad.update(failed)
    assert seen == [i for i in range(12) if i != 4] and bad == {4: "not an image"}
    one_by_one = np.concatenate([predictor.probabilities([files[i]]) for i in seen])
    np.testing.assert_allclose(np.concatenate(probs), one_by_one, rtol=1e-4, atol=1e-5)
    with pytest.raises(UnreadableImage):
        predictor.probabilities(files)


def test_predict_files_reads_each_file_once(predictor, files, monkeypatch):
    calls = []
    real = bundle_mod.load_resized
    monkeypatch.setattr(bundle_mod, "load_resized", lambda ref, size: calls.append(ref)
                        or real(ref, size))
    rows, bad = predict_files(predictor, files, bs=4)
    assert sorted(calls) == sorted(files)
    assert [r["file"] for r in rows] == [f for i, f in enumerate(files) if i != 4]
    assert bad == {4: "not an image"} and {r["label"] for r in rows} <= {"a", "b", "c"}


def test_submission_keeps_unreadable_rows(predictor, files, tmp_path):
    n, reasons = write_submission(predictor, files, tmp_path / "sub.csv")
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert n == 12 and lines[0] == "id,label" and lines[5] == "bad.jpg,"
    assert reasons == {"bad.jpg": "not an image"}
