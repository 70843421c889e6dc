"""The run directory is final when `fit` returns; `easycls.save` saves the Learner as it is now."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, color_image, label_mosaic, write_class_folders
from fastai.callback.progress import CSVLogger

import easycls
from easycls.config import TrainConfig
from easycls.data.prepare import build_dataloaders
from easycls.learners import set_thresholds, single_label_learner

SMALL = {**TINY, "arch": "test_resnet", "lr": 3e-3}
LABELS = ["a", "b", "c", "d"]


def _files(root, n: int = 100, seed: int = 7) -> list[str]:
    """`n` colour-coded images of 3 classes, to predict on."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"{i}.png" for i in range(n)]
    for i, p in enumerate(paths):
        color_image(i % 3, 3, rng).save(p)
    return [str(p) for p in paths]


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".easycls.lock"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = write_class_folders(tmp_path_factory.mktemp("d") / "pets", per_class=10)
    out = tmp_path_factory.mktemp("runs") / "run"
    log = tmp_path_factory.mktemp("logs") / "events.jsonl"
    learn = easycls.fit(str(root), out=str(out), log_json=str(log), **SMALL)
    return learn, out, root, log


def test_the_run_directory_is_final_when_fit_returns(run, tmp_path, monkeypatch):
    learn, out, _, log = run
    before, events = _tree(out), log.read_bytes()
    monkeypatch.chdir(tmp_path)
    learn.fit_one_cycle(1)
    learn.fit_one_cycle(1, cbs=CSVLogger())  # fastai's logger: writes learn.path/history.csv
    assert _tree(out) == before and log.read_bytes() == events
    assert learn.path != out and (tmp_path / "history.csv").is_file()
    assert len(learn.recorder.values) == 1  # it did train


def test_save_after_training_at_a_new_size_predicts_as_the_learner(run, tmp_path):
    learn, _, root, _ = run
    cfg = TrainConfig(source=str(root), size=48, bs=8, seed=0, augment=False)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    learn.dls = build_dataloaders(cfg, device=learn.dls.device, normalization=(mean, std))
    learn.fit_one_cycle(1, 1e-3)
    bundle = easycls.save(learn, tmp_path / "now")
    p = easycls.load(bundle, device="cpu")
    assert p.size == 48 and p.meta["mean"] == pytest.approx(mean)
    assert p.meta["std"] == pytest.approx(std)
    files = _files(tmp_path / "imgs")
    probs = p.probabilities(files)
    ours, decided = _learner_predictions(learn, files)
    assert [p.classes[i] for i in probs.argmax(1)] == [learn.dls.vocab[i] for i in decided]
    np.testing.assert_allclose(probs, ours, atol=1e-4)  # 100/100, and the same probabilities


def _learner_predictions(learn, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """What `learn.predict` gives each file (probabilities, decoded), in one batched pass:
    `predict` is `get_preds(dl=test_dl([item]), with_decoded=True)`; checked on a few."""
    probs, _, decided = learn.get_preds(dl=learn.dls.test_dl(files), with_decoded=True)
    for k in (0, len(files) // 2, len(files) - 1):
        _, dec, one = learn.predict(files[k])
        assert np.allclose(one.numpy(), probs[k].numpy(), atol=1e-5)
        assert np.array_equal(np.asarray(dec), decided[k].numpy())
    return probs.numpy(), decided.numpy()


@pytest.fixture(scope="module")
def ml_learn(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    lines = ["ImageID,Labels"]
    for i in range(48):
        on = sorted(rng.choice(LABELS, size=int(rng.integers(1, 3)), replace=False).tolist())
        label_mosaic(on, LABELS, rng).save(root / "data" / f"{i}.png")
        lines.append(f"{i}.png,{' '.join(on)}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    learn = easycls.fit(str(root / "train.csv"), images=str(root / "data"),
                        out=str(root / "run"), **SMALL)
    return learn, root


def test_save_after_set_thresholds_decides_as_the_learner(ml_learn, tmp_path):
    learn, _ = ml_learn
    rng = np.random.default_rng(3)
    files = []
    for i in range(100):
        files.append(str(tmp_path / f"{i}.png"))
        label_mosaic([LABELS[i % 4], LABELS[(i * 7) % 4]], LABELS, rng).save(files[-1])
    p0 = easycls.load(easycls.save(learn, tmp_path / "tuned"), device="cpu")
    probs = p0.probabilities(files)
    # thresholds that change decisions: each class at the median of its probabilities
    median = [float(t) for t in np.median(probs, 0)]
    set_thresholds(learn, {"per_class": median, "at_least_one": True})
    p = easycls.load(easycls.save(learn, tmp_path / "retuned"), device="cpu")
    assert p.meta["thresholds"]["per_class"] == median and p.meta["thresholds"]["at_least_one"]
    saved = [sorted(labels) for labels, _ in p.decide(probs)]
    _, decided = _learner_predictions(learn, files)
    assert saved == [sorted(np.array(LABELS)[row].tolist()) for row in decided]  # 100/100
    assert saved != [sorted(labels) for labels, _ in p0.decide(probs)]  # the change mattered


def test_save_a_factory_learner_on_plain_fastai_dataloaders(tmp_path):
    from fastai.vision.all import ImageDataLoaders, Resize
    root = write_class_folders(tmp_path / "pets", per_class=6)
    dls = ImageDataLoaders.from_folder(root, valid_pct=0.25, seed=0, item_tfms=Resize(32),
                                       bs=8, num_workers=0, device="cpu")
    learn = single_label_learner(dls, "test_resnet", n_out=3, pretrained=False)
    learn.fit_one_cycle(1, 1e-3)
    p = easycls.load(easycls.save(learn, tmp_path / "b"), device="cpu")
    assert (p.meta["arch"], p.classes, p.size) == ("test_resnet", ["cat", "dog", "fox"], 32)
    assert (p.meta["mean"], p.meta["std"]) == ([0.0] * 3, [1.0] * 3)  # no Normalize in these dls
    files = _files(tmp_path / "imgs", n=30)
    _, decided = _learner_predictions(learn, files)
    assert [lab for lab, _ in p.predict_many(files)] == [learn.dls.vocab[i] for i in decided]
