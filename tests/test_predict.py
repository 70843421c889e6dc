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
    real = bundle_mod.to_pixels  # the predictor's one image-to-pixels step
    monkeypatch.setattr(bundle_mod, "to_pixels", lambda ref, size: calls.append(ref)
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


def test_model_input_is_the_validation_normalization_whatever_the_batch_sizes():
    import torch

    meta = dict(input_size=5, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    inputs = bundle_mod._Inputs(meta, torch.device("cpu"))
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(
        1, 3, 1, 1)
    rng = np.random.default_rng(0)
    # A large batch, then smaller ones in the same (reused) buffer, then a large one again.
    for n in (4, 1, 3, 4):
        batch = rng.integers(0, 256, (n, 5, 5, 3), dtype=np.uint8)
        got = inputs(batch)
        want = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - mean) / std
        assert got.shape == (n, 3, 5, 5) and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_loaded_model_has_its_batch_norms_folded(predictor):
    import torch
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())


def test_cpu_chunks_keep_the_largest_activation_under_the_reused_size(monkeypatch):
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.AdaptiveAvgPool2d(1))
    # the largest output: 8 channels x 16 x 16 float32 = 8 KB per image
    assert bundle_mod._cpu_chunk(model.eval(), 16) == (32 << 20) // (8 * 16 * 16 * 4)
    monkeypatch.setattr(bundle_mod, "_FRESH_PAGES_ABOVE", 20_000)
    assert bundle_mod._cpu_chunk(model, 16) == 2


def test_chunked_model_calls_give_the_same_probabilities(predictor, files, monkeypatch):
    good = [f for i, f in enumerate(files) if i != 4]
    whole = predictor.probabilities(good, bs=8)
    monkeypatch.setattr(predictor, "_cpu_chunk", 3)  # batches of 8 in calls of 3, 3, 2
    np.testing.assert_allclose(predictor.probabilities(good, bs=8), whole, rtol=1e-5, atol=1e-6)
