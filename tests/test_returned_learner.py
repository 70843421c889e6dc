"""The Learner `fit` returns answers fastai calls as a Learner the user built would:
test_dl with labels, multi-label validate at the tuned thresholds, plot_loss, quiet only
during fit, float image arrays."""

from __future__ import annotations

import csv
import json
import shutil

import matplotlib
import numpy as np
import pytest
from conftest import fit_multilabel, write_class_folders
from PIL import Image

import easycls

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TINY = dict(arch="test_resnet", pretrained=False, epochs=1, size=16, bs=8, lr=3e-3, quiet=True)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = write_class_folders(tmp_path_factory.mktemp("data") / "pets")
    learn = easycls.fit(str(root), out=str(tmp_path_factory.mktemp("runs") / "s"), **TINY)
    # What plot_loss draws right after fit (a later get_preds resets the Recorder, as in fastai).
    plt.close("all")
    learn.recorder.plot_loss(skip_start=0)
    drawn = [len(line.get_xdata()) for line in plt.gca().get_lines()]
    learn.easycls_test_plot = (drawn, len(learn.recorder.losses), len(learn.recorder.values))
    return learn, root


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    return fit_multilabel(tmp_path_factory, "m", **{**TINY, "epochs": 2})


def test_test_dl_with_labels_takes_them_from_the_run_or_the_folder(single, tmp_path):
    learn, root = single
    files = sorted(root.glob("*/*.png"))[::5]
    dl = learn.dls.test_dl(files, with_labels=True)
    _, targets = learn.get_preds(dl=dl)
    assert targets.tolist() == [learn.dls.vocab.o2i[f.parent.name] for f in files]
    # An image the run never saw, in a folder named after a class: fastai's parent_label.
    (tmp_path / "dog").mkdir()
    new = shutil.copy(files[0], tmp_path / "dog" / "new.png")
    _, targets = learn.get_preds(dl=learn.dls.test_dl([new], with_labels=True))
    assert targets.tolist() == [learn.dls.vocab.o2i["dog"]]
    stray = shutil.copy(files[0], tmp_path / "stray.png")
    with pytest.raises(ValueError, match="cannot tell the label"):
        learn.dls.test_dl([stray], with_labels=True).one_batch()


def test_multi_label_test_dl_with_labels_reads_the_run_table(multi):
    learn, _, root = multi
    files = [root / "images" / f"{i}.png" for i in range(6)]
    _, targets = learn.get_preds(dl=learn.dls.test_dl(files, with_labels=True))
    with open(root / "train.csv", newline="") as f:
        rows = {r["ImageID"]: r["Labels"].split() for r in csv.DictReader(f)}
    want = [[float(c in rows[f.name]) for c in learn.dls.vocab] for f in files]
    assert targets.tolist() == want


def test_multi_label_validate_scores_at_the_tuned_thresholds(multi):
    learn, out, _ = multi
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    # While training, the per-epoch F1 is at 0.5: the last epoch's row is metrics.json's at_0.5.
    assert float(last["f1_samples"]) == pytest.approx(metrics["at_0.5"]["f1_samples"], abs=1e-6)
    names = ["valid_loss"] + [m.name for m in learn.metrics]
    scores = dict(zip(names, learn.validate()))
    for key in ("f1_samples", "f1_micro", "precision_micro", "recall_micro"):
        assert scores[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_plot_loss_shows_the_runs_losses(single):
    learn, _ = single
    drawn, n_losses, n_values = learn.easycls_test_plot
    assert n_losses == len(learn.dls.train) and n_values == 1  # one epoch's batches
    assert drawn[0] == n_losses  # the training curve has every batch's loss


def test_quiet_applies_to_fit_alone(single, capsys):
    learn, _ = single
    capsys.readouterr()
    learn.fit_one_cycle(1, 1e-4)
    assert "epoch 1/1" in capsys.readouterr().out  # plain progress lines: not a terminal


def test_float_image_arrays_in_0_1_are_read_as_such(single):
    learn, root = single
    pixels = np.asarray(Image.open(next(root.glob("fox/*.png"))).convert("RGB"))
    as_float = pixels.astype(np.float32) / 255.0
    _, _, p_uint8 = learn.predict(pixels)
    _, _, p_float = learn.predict(as_float)
    assert np.allclose(p_uint8.numpy(), p_float.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        learn.predict(pixels.astype(np.float32))  # 0-255 floats: refused, not wrapped
