"""The `learn` that `fit` returns is a fastai Learner that works with fastai habits.

Every row of issue 11's table, on a digits run (single-label) and a multi-label run, with
real outputs compared against easycls's own answers (`easycls.load`, `evaluate`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from conftest import LABELS, fit_multilabel, write_multilabel
from PIL import Image

import easycls

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from fastai.interpret import ClassificationInterpretation, Interpretation  # noqa: E402
from fastai.vision.core import PILImage  # noqa: E402

pytestmark = pytest.mark.slow

RUN = dict(arch="resnet18", pretrained=False, epochs=1, size=32, bs=32, lr=2e-3, quiet=True)
PROBE = Path(__file__).with_name("contract_probe.py")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("contract") / "digits"
    learn = easycls.fit("digits", out=str(out), **RUN)
    return learn, out


@pytest.fixture(scope="session")
def multi_run(tmp_path_factory):
    learn, out, _ = fit_multilabel(tmp_path_factory, "multi", **{**RUN, "bs": 16, "epochs": 2})
    return learn, out


@pytest.fixture(params=["digits", "multi"])
def run(request):
    return request.getfixturevalue(f"{request.param}_run")


def _files(learn, k: int = 3) -> list[str]:
    return list(learn.dls.valid.dataset.pixels.refs[:k])


def _label(decoded):
    return decoded if isinstance(decoded, str) else list(decoded)


def test_vocab_and_c(run):
    learn, out = run
    classes = json.loads((out / "model.json").read_text())["classes"]
    assert list(learn.dls.vocab) == classes and learn.dls.c == len(classes)


def test_predict_a_path_or_a_pil_image_as_easycls_load_does(run):
    learn, out = run
    predictor = easycls.load(out, device="cpu")
    for f in _files(learn):
        decoded, _, probs = learn.predict(f)
        assert _label(decoded) == predictor.predict(f)[0]
        np.testing.assert_allclose(probs.numpy(), predictor.probabilities([f])[0], atol=1e-4)
        assert _label(learn.predict(PILImage.create(f))[0]) == _label(decoded)


def test_test_dl_takes_paths_pil_images_and_arrays(run):
    learn, out = run
    f = _files(learn, 1)[0]
    items = [f, PILImage.create(f), np.asarray(Image.open(f).convert("RGB"))]
    preds, _ = learn.get_preds(dl=learn.dls.test_dl(items))
    expected = easycls.load(out, device="cpu").probabilities([f])[0]
    assert preds.shape == (3, learn.dls.c)
    for row in preds.numpy():
        np.testing.assert_allclose(row, expected, atol=1e-4)


def _image_axes() -> list:
    return [ax for ax in plt.gcf().axes if ax.images]


def _title_labels(ax) -> set[str]:
    return {w for w in ax.get_title().replace(";", " ").split() if w}


def test_show_batch_draws_labelled_images(run):
    learn, _ = run
    plt.close("all")
    learn.dls.show_batch(max_n=4)
    axes = _image_axes()
    assert len(axes) == 4
    for ax in axes:
        assert _title_labels(ax) and _title_labels(ax) <= set(learn.dls.vocab)
        assert np.asarray(ax.images[0].get_array()).std() > 0  # a picture, not a blank


def test_show_results_draws_denormalized_images_with_predictions(run):
    learn, _ = run
    plt.close("all")
    learn.show_results(max_n=4, shuffle=False)
    axes = _image_axes()
    assert len(axes) == 4
    assert _title_labels(axes[0]) <= set(learn.dls.vocab)
    # The first validation image, denormalized by fastai's Normalize decode: its own pixels.
    shown = np.asarray(axes[0].images[0].get_array()).astype(float)
    stored = np.asarray(learn.dls.valid.dataset.pixels[0]).astype(float)
    assert np.abs(shown - stored).max() <= 1.0


def test_summary(run):
    learn, _ = run
    text = learn.summary()
    assert "Total params" in text and "Input shape" in text


def test_interpretation_matches_easycls(digits_run):
    learn, out = digits_run
    from easycls.metrics import confusion_matrix
    interp = ClassificationInterpretation.from_learner(learn)
    ds = learn.dls.valid.dataset
    probs = easycls.load(out, device="cpu").probabilities(list(ds.pixels.refs))
    ours = confusion_matrix(np.asarray(ds.targets), probs.argmax(1), learn.dls.c)
    np.testing.assert_array_equal(interp.confusion_matrix(), ours)
    losses, idx = interp.top_losses(5)
    assert len(idx) == 5 and (losses[:-1] >= losses[1:]).all()
    plt.close("all")
    interp.plot_top_losses(3)
    assert len(_image_axes()) == 3


def test_multilabel_top_losses(multi_run):
    learn, _ = multi_run
    losses, idx = Interpretation.from_learner(learn).top_losses(3)
    assert len(idx) == 3 and (losses[:-1] >= losses[1:]).all()


def test_tta_returns_probabilities_of_augmented_images(run):
    learn, _ = run
    preds, targs = learn.tta(n=2)
    plain, _ = learn.get_preds()
    n_valid = len(learn.dls.valid.dataset)
    assert preds.shape == (n_valid, learn.dls.c) and len(targs) == n_valid
    assert 0 <= float(preds.min()) and float(preds.max()) <= 1
    if learn.dls.c and not learn.dls.valid.dataset.multi_label:
        np.testing.assert_allclose(preds.sum(1).numpy(), 1, atol=1e-4)
    assert not np.allclose(preds.numpy(), plain.numpy(), atol=1e-6)  # augmentation ran


def test_export_then_load_learner_in_a_fresh_process(run, tmp_path):
    learn, out = run
    pkl = tmp_path / "export.pkl"  # learn.path is not the run directory: name the file
    learn.export(pkl)
    # Only transforms and the model: no pixels or targets travel in the pickle.
    assert pkl.stat().st_size < 1.5 * (out / "model.safetensors").stat().st_size
    f = _files(learn, 1)[0]
    code = ("import sys, json, warnings; warnings.simplefilter('ignore')\n"
            "from fastai.learner import load_learner\n"
            "dec = load_learner(sys.argv[1]).predict(sys.argv[2])[0]\n"
            "print(json.dumps(dec if isinstance(dec, str) else list(dec)))\n")
    res = subprocess.run([sys.executable, "-c", code, str(pkl), f], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        json.loads(res.stdout.strip().splitlines()[-1])
        == easycls.load(out, device="cpu").predict(f)[0]
    )
    pkl.unlink()


def test_contract_on_rank_0_after_two_processes(tmp_path):
    from test_distributed import _torchrun
    root = write_multilabel(tmp_path / "data", n=32)
    res = _torchrun(str(PROBE), str(root), "run", "probe.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads((tmp_path / "probe.json").read_text())
    predictor = easycls.load(tmp_path / "run", device="cpu")
    assert got["world"] == 2
    assert got["predict"] == predictor.predict(got["file"])[0]
    assert got["loaded_predict"] == got["predict"]
    assert got["test_preds_shape"] == [2, len(LABELS)]
    assert got["tta_shape"] == [got["n_valid"], len(LABELS)]
    assert got["show_results_axes"] == 4 and "Total params" in got["summary"]
