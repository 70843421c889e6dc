"""fit takes fastai's own pieces (cbs, loss_func, metrics, opt_func, splitter, moms) and
records them; the returned Learner keeps working with them."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit_multilabel, write_class_folders
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.learner import load_learner
from fastai.losses import BCEWithLogitsLossFlat, LabelSmoothingCrossEntropyFlat
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


def _two_gloo_ranks(tmp_path, *mode: str) -> tuple[dict, dict, Path]:
    """`pieces_probe.py` under 2 gloo processes on train/ (48 images: 3 batches of 8 per
    rank) and valid/ (12) folders: (rank 0's record, rank 1's, the working folder)."""
    from test_distributed import _torchrun
    root = tmp_path / "split"
    write_class_folders(root / "train", per_class=16, seed=1)
    write_class_folders(root / "valid", per_class=4, seed=2)
    work = tmp_path / "work"
    work.mkdir()
    probe = Path(__file__).with_name("pieces_probe.py")
    res = _torchrun(str(probe), str(root), "run", "records", *mode, cwd=work)
    assert res.returncode == 0, res.stdout + res.stderr
    r0, r1 = (json.loads((work / "records" / f"rank{r}.json").read_text()) for r in (0, 1))
    return r0, r1, work


@pytest.mark.slow
def test_user_callbacks_under_two_gloo_processes(tmp_path):
    r0, r1, work = _two_gloo_ranks(tmp_path)
    # A training callback runs on every rank, on that rank's shard (3 batches an epoch), and
    # early stopping stops both ranks after the same epoch.
    assert r0["epochs"] == r1["epochs"] == 2
    assert r0["seen"] == r1["seen"] == 2 * 3
    # A logger runs on rank 0 alone: one file, one row per epoch.
    assert r0["logger_attached"] and not r1["logger_attached"]
    rows = [r for r in (work / "run" / "user_log.csv").read_text().splitlines()
            if not r.startswith("epoch")]
    assert len(rows) == 2


@pytest.mark.slow
def test_users_dataloaders_under_two_gloo_processes(tmp_path):
    r0, r1, work = _two_gloo_ranks(tmp_path, "dls")
    # Each rank trains its own shard of the user's loader: 3 of the 6 batches, each epoch.
    assert r0["epochs"] == r1["epochs"] == 2 and r0["seen"] == r1["seen"] == 2 * 3
    run = work / "run"
    assert all((run / f).is_file() for f in ("model.safetensors", "model.json", "metrics.json",
                                             "history.csv", "config.json"))
    assert len(_rows(run / "history.csv")) == 2
    assert json.loads((run / "metrics.json").read_text())["n_valid"] == 12  # gathered, once each
    saved = easycls.load(run, device="cpu")
    assert [label for label, _ in saved.predict_many(r0["files"])] == r0["predict"]


def test_batch_tfms_replace_easycls_augmentation_and_the_run_says_so(class_folders, tmp_path,
                                                                     capsys):
    from fastai.vision.augment import Brightness, Flip, aug_transforms

    from easycls.data.loaders import BatchAugment
    learn = easycls.fit(str(class_folders), out=str(tmp_path / "r"), epochs=1,
                        **{**TINY, "quiet": False}, batch_tfms=aug_transforms(max_warp=0))
    out = capsys.readouterr().out
    assert "augmentation: your batch_tfms (Flip, Brightness), replacing easycls's" in out
    train_tfms = [type(t) for t in learn.dls.train.after_batch.fs]
    assert Flip in train_tfms and Brightness in train_tfms and BatchAugment not in train_tfms
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["augment"] is False
    assert [e["import"] for e in cfg["fastai"]["batch_tfms"]] == [
        "fastai.vision.augment:Flip", "fastai.vision.augment:Brightness"]


def test_batch_tfms_checks_and_notes():
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import Brightness, Flip

    from easycls.pieces import augmentation_note, validation_note
    with pytest.raises(ConfigError, match="leave out Normalize"):
        split_pieces({"batch_tfms": [Flip(), Normalize()]})
    assert len(split_pieces({"item_tfms": Flip()})[0].item_tfms) == 1  # kept: run per item
    pieces, _ = split_pieces({"batch_tfms": [Flip(), Brightness()]})
    assert augmentation_note(pieces, True) == (
        "augmentation: easycls's and your batch_tfms (Flip, Brightness)")
    assert validation_note(pieces) == ""  # random transforms: training batches only
    everywhere = Brightness()
    everywhere.split_idx = None
    pieces, _ = split_pieces({"batch_tfms": [everywhere]})
    assert validation_note(pieces).startswith("note: batch_tfms Brightness also change "
                                              "validation images")


def test_batch_tfms_extend_easycls_augmentation_when_asked(class_folders):
    from fastai.vision.augment import Flip

    from easycls.config import TrainConfig
    from easycls.data.loaders import BatchAugment
    from easycls.data.prepare import build_dataloaders
    cfg = TrainConfig(source=str(class_folders), size=16, bs=8, augment=True, workers=0)
    dls = build_dataloaders(cfg, batch_tfms=[Flip()], device=torch.device("cpu"))
    kinds = [type(t) for t in dls.train.after_batch.fs]
    assert BatchAugment in kinds and Flip in kinds
    assert kinds.index(BatchAugment) < kinds.index(Flip)  # by fastai's order: 20, then 30


class FocalLoss(torch.nn.Module):
    """A multi-label focal loss as users write one: no `activation`, no `decodes`."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, targets):
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(),
                                                                   reduction="none")
        return ((1 - torch.exp(-bce)) ** self.gamma * bce).mean()


@pytest.mark.parametrize("make_loss", [
    pytest.param(lambda: BCEWithLogitsLossFlat(pos_weight=torch.full((4,), 2.0)),
                 id="bce_pos_weight", marks=pytest.mark.slow),
    pytest.param(FocalLoss, id="focal")])
def test_a_users_multi_label_loss_gets_tuned_thresholds(make_loss, tmp_path_factory):
    loss = make_loss()
    learn, out, root = fit_multilabel(tmp_path_factory, "loss", **{**TINY, "epochs": 2},
                                      loss_func=loss)
    assert learn.loss_func is loss
    metrics = json.loads((out / "metrics.json").read_text())
    meta = json.loads((out / "model.json").read_text())
    tuned = metrics["thresholds"]["per_class"]
    assert tuned != [0.5] * 4  # tuned, not fastai's default
    assert meta["multi_label"] and meta["thresholds"]["per_class"] == pytest.approx(tuned)
    assert {"f1_samples", "f1_micro", "precision_micro"} <= set(_rows(out / "history.csv")[0])
    # validate() scores at the tuned thresholds, as metrics.json does
    scores = dict(zip(["valid_loss"] + [m.name for m in learn.metrics], learn.validate()))
    assert scores["f1_samples"] == pytest.approx(metrics["f1_samples"], abs=1e-6)
    # learn.predict decides at the tuned thresholds, on the probabilities the bundle gives.
    files = sorted((root / "images").glob("*.png"))[:20]
    saved = easycls.load(out, device="cpu")
    th, vocab = np.asarray(tuned), np.asarray(learn.dls.vocab)
    refs = [str(f) for f in files]
    for f, (labels, _), probs in zip(files, saved.predict_many(refs), saved.probabilities(refs)):
        got, _, p = learn.predict(f)
        assert np.allclose(p.numpy(), probs, atol=1e-4)
        assert sorted(got) == sorted(vocab[p.numpy() >= th].tolist())
        if np.abs(probs - th).min() > 1e-4:  # thresholds sit on validation probabilities
            assert sorted(got) == sorted(labels)
