"""fit takes fastai's own pieces (cbs, loss_func, metrics, opt_func, splitter, moms) and
records them; the returned Learner keeps working with them."""

from __future__ import annotations

import csv
import json
from functools import partial

import pytest
import torch
from conftest import write_class_folders
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import load_learner
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai.metrics import F1Score
from fastai.optimizer import Adam

import easycls
from easycls.config import ConfigError
from easycls.pieces import describe, logs_only, split_pieces

TINY = dict(arch="test_resnet", pretrained=False, size=16, bs=8, lr=3e-3, quiet=True)


class CountBatches(Callback):
    """Counts the training batches it sees (a user callback)."""

    def __init__(self):
        self.seen = 0

    def after_batch(self):
        self.seen += int(self.training)


def three_groups(model):
    ps = [p for p in model.parameters()]
    k = len(ps) // 3
    return [ps[:k], ps[k:2 * k], ps[2 * k:]]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def pieces_run(tmp_path_factory):
    root = write_class_folders(tmp_path_factory.mktemp("data") / "pets")
    out = tmp_path_factory.mktemp("runs") / "pieces"
    counter, loss = CountBatches(), LabelSmoothingCrossEntropyFlat()
    learn = easycls.fit(str(root), out=str(out), epochs=1, **TINY, cbs=[counter],
                        loss_func=loss, metrics=[F1Score(average="macro")],
                        opt_func=partial(Adam, eps=1e-6), moms=(0.9, 0.8, 0.9))
    return learn, out, counter, loss, root


def test_pieces_reach_the_learner_history_metrics_and_config(pieces_run):
    learn, out, counter, loss, _ = pieces_run
    assert learn.loss_func is loss
    assert counter.seen == len(learn.dls.train)  # one epoch of batches
    assert learn.moms == (0.9, 0.8, 0.9) and learn.opt.hypers[0]["eps"] == 1e-6
    rows = _rows(out / "history.csv")
    assert "f1_score" in rows[0] and 0.0 <= float(rows[0]["f1_score"]) <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["f1_score"] <= 1.0 and "accuracy" in metrics
    recorded = json.loads((out / "config.json").read_text())["fastai"]
    assert recorded["cbs"][0]["import"] == f"{CountBatches.__module__}:CountBatches"
    assert recorded["loss_func"]["import"] == "fastai.losses:LabelSmoothingCrossEntropyFlat"
    assert recorded["loss_func"]["args"]["eps"] == 0.1
    assert recorded["metrics"][0]["name"] == "f1_score"
    assert recorded["opt_func"] == {"import": "fastai.optimizer:Adam", "args": {"eps": 1e-6}}
    assert recorded["moms"] == [0.9, 0.8, 0.9]


def test_resume_refuses_without_the_pieces_and_names_them(pieces_run):
    _, out, *_ = pieces_run
    with pytest.raises(ConfigError) as e:
        easycls.fit(resume=str(out))
    msg = str(e.value)
    assert f"{CountBatches.__module__}:CountBatches" in msg
    assert "LabelSmoothingCrossEntropyFlat" in msg
    assert "opt_func" in msg and "moms" in msg


def test_discriminative_lrs_after_a_new_splitter(pieces_run):
    learn = pieces_run[0]
    learn.splitter = three_groups
    learn.fit_one_cycle(1, slice(1e-5, 1e-3))
    assert len(learn.opt.param_lists) == 3
    lrs = [h["lr"] for h in learn.opt.hypers]
    assert lrs[0] < lrs[1] < lrs[2]


def test_export_keeps_working_with_pieces(pieces_run, tmp_path):
    learn, *_, root = pieces_run
    learn.export(tmp_path / "export.pkl")
    again = load_learner(tmp_path / "export.pkl")
    image = next(root.glob("cat/*.png"))
    assert again.predict(image)[0] == learn.predict(image)[0]


@pytest.mark.slow
def test_splitter_and_replaced_metrics_and_early_stopping(class_folders, tmp_path):
    # lr near zero: the loss cannot improve by min_delta, so patience 1 stops after epoch 2.
    learn = easycls.fit(str(class_folders), out=str(tmp_path / "r"), epochs=5,
                        **{**TINY, "lr": 1e-9}, splitter=three_groups,
                        cbs=EarlyStoppingCallback(monitor="valid_loss", patience=1, min_delta=1.0),
                        metrics=[F1Score(average="macro")], default_metrics=False)
    rows = _rows(tmp_path / "r" / "history.csv")
    assert len(rows) == 2
    assert [k for k in rows[0] if k not in ("epoch", "seconds")] == [
        "train_loss", "valid_loss", "f1_score"]
    assert len(learn.opt.param_lists) == 3
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "accuracy" in metrics and "f1_score" in metrics  # metrics.json keeps its contract


def test_split_pieces_checks_moms_and_describes_plain_arguments():
    with pytest.raises(ConfigError, match="moms"):
        split_pieces({"moms": (0.9, 0.8)})
    pieces, rest = split_pieces({"epochs": 2, "cbs": EarlyStoppingCallback(patience=3)})
    assert rest == {"epochs": 2} and len(pieces.cbs) == 1
    assert describe(pieces.cbs[0])["args"]["patience"] == 3
    assert describe(torch.nn.functional.cross_entropy)["import"].endswith(":cross_entropy")


def test_only_logging_callbacks_are_rank_zero_only():
    from fastai.callback.progress import CSVLogger, ProgressCallback
    assert logs_only(CSVLogger()) and logs_only(ProgressCallback())
    assert not logs_only(EarlyStoppingCallback()) and not logs_only(CountBatches())
    marked = CountBatches()
    marked.main_only = True
    assert logs_only(marked)
