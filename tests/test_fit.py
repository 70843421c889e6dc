"""fit() end to end on generated data: layouts, the run-directory contract, save/load round trip."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY, write_class_folders

import easycls
from easycls.data.sources import DataError
from easycls.learners import ArchError, PretrainedUnavailable

RUN_FILES = {
    "model.safetensors",
    "model.json",
    "metrics.json",
    "history.csv",
    "config.json",
    "loss.png",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small run shared by the contract tests (class folders, random split)."""
    root = write_class_folders(tmp_path_factory.mktemp("d") / "pets", per_class=16)
    out = tmp_path_factory.mktemp("runs") / "run"
    # Augmented, as written against: ten steps leave batch-norm's running statistics raw,
    # and which seeds land above chance on 10 validation images shifts with the settings.
    learn = easycls.fit(str(root), out=str(out), **{**TINY, "epochs": 2, "augment": True})
    return learn, out, root


def test_run_directory_contract(trained):
    learn, out, _ = trained
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "valid_loss", "train_seconds"} <= set(metrics)
    assert "top5_accuracy" not in metrics  # only 3 classes
    assert metrics["accuracy"] > 0.8  # colour-coded classes are easy
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["cat", "dog", "fox"]
    assert meta["arch"] == "resnet18" and meta["input_size"] == 32 and not meta["multi_label"]
    assert (
        len(meta["mean"]) == len(meta["std"]) == 3
        and meta["easycls_version"] == easycls.__version__
    )
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train_loss", "valid_loss", "accuracy", "seconds"} <= set(rows[0])
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 2 and config["lr"] == TINY["lr"] and config["arch"] == "resnet18"


def test_load_predict_matches_training_model(trained):
    learn, out, root = trained
    probs, _ = learn.get_preds(ds_idx=1)
    valid_refs = learn.dls.valid.dataset.pixels.refs
    predictor = easycls.load(out, device="cpu")
    again = predictor.probabilities(valid_refs)
    np.testing.assert_allclose(again, probs.numpy(), atol=1e-4)
    label, prob = predictor.predict(valid_refs[0])
    assert label in predictor.classes and 0 < prob <= 1
    # A PIL image gives the same answer as its path.
    from PIL import Image
    assert predictor.predict(Image.open(valid_refs[0]))[0] == label


def test_load_in_fresh_process_needs_no_fastai(trained):
    _, out, root = trained
    img = next((root / "dog").iterdir())
    code = ("import sys, easycls; p = easycls.load(sys.argv[1], device='cpu'); "
            "print(p.predict(sys.argv[2])[0]); print('fastai' in sys.modules)")
    res = subprocess.run(
        [sys.executable, "-c", code, str(out), str(img)], capture_output=True, text=True, check=True
    )
    label, fastai_loaded = res.stdout.split()
    assert label == "dog" and fastai_loaded == "False"
    # No pickle; and checkpoint.pth (the resume state) is removed once the run completed.
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.pth"))


def test_save_learner_as_bundle(trained, tmp_path):
    learn, out, root = trained
    easycls.save(learn, tmp_path / "copy")
    a = easycls.load(out, device="cpu").probabilities([str(next((root / "cat").iterdir()))])
    b = easycls.load(tmp_path / "copy", device="cpu").probabilities(
        [str(next((root / "cat").iterdir()))]
    )
    np.testing.assert_allclose(a, b)


def test_split_folders_and_test_predictions(split_folders, tmp_path):
    learn = easycls.fit(str(split_folders), out=str(tmp_path / "run"), **TINY)
    assert len(learn.dls.valid.dataset) == 12 and len(learn.dls.train.dataset) == 36
    rows = list(csv.DictReader((tmp_path / "run" / "test_predictions.csv").open()))
    assert len(rows) == 5 and {r["label"] for r in rows} <= {"cat", "dog", "fox"}
    assert all(0 < float(r["probability"]) <= 1 for r in rows)


def test_csv_source(class_folders, tmp_path):
    csv_path = tmp_path / "labels.csv"
    files = sorted(p.relative_to(class_folders).as_posix() for p in class_folders.rglob("*.png"))
    csv_path.write_text("filename,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in files))
    learn = easycls.fit(str(csv_path), images=str(class_folders), out=str(tmp_path / "run"), **TINY)
    assert learn.easycls.bundle_meta["classes"] == ["cat", "dog", "fox"]
    assert len(learn.dls.train.dataset) + len(learn.dls.valid.dataset) == len(files)


def test_zip_source(class_folders, tmp_path):
    import shutil
    archive = shutil.make_archive(str(tmp_path / "pets"), "zip", class_folders.parent, "pets")
    learn = easycls.fit(archive, out=str(tmp_path / "run"), **TINY)
    assert learn.easycls.bundle_meta["classes"] == ["cat", "dog", "fox"]
    assert "!/" in learn.dls.train.dataset.pixels.refs[0]


def test_random_split_is_seeded(class_folders):
    from easycls.data.prepare import random_split
    assert random_split(50, 0.2, 1) == random_split(50, 0.2, 1)
    assert random_split(50, 0.2, 1) != random_split(50, 0.2, 2)
    assert sum(random_split(50, 0.2, 1)) == 10


def test_recipe_defaults_yield_to_user_settings():
    from easycls.train import resolve_config
    cfg = resolve_config("digits")
    assert cfg.size == 32 and cfg.pretrained is False
    cfg = resolve_config("digits", size=40, epochs=1)
    assert cfg.size == 40 and cfg.epochs == 1 and cfg.pretrained is False


def test_unknown_arch_suggests_names(class_folders, tmp_path):
    with pytest.raises(ArchError, match="resnet18"):
        easycls.fit(str(class_folders), **{**TINY, "arch": "resnet181"}, out=str(tmp_path / "r"))


def test_offline_pretrained_fails_fast_with_hint(class_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    t0 = time.perf_counter()
    with pytest.raises(PretrainedUnavailable) as err:
        easycls.fit(
            str(class_folders),
            **{**TINY, "pretrained": True, "arch": "resnet10t"},
            out=str(tmp_path / "r"),
        )
    assert time.perf_counter() - t0 < 10
    assert "--no-pretrained" in str(err.value) and "--weights" in str(err.value)


def test_local_weights_file(class_folders, tmp_path):
    import timm
    from safetensors.torch import save_file
    weights = tmp_path / "w.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    learn = easycls.fit(
        str(class_folders), **{**TINY, "weights": str(weights)}, out=str(tmp_path / "r")
    )
    # fine_tune ran: one frozen epoch, then the planned one
    assert (
        len(learn.recorder.values) == 1
        and (tmp_path / "r" / "history.csv").read_text().count("\n") == 3
    )


def test_unknown_source_suggests_recipe():
    with pytest.raises(DataError, match="digits"):
        easycls.fit("digitz", **TINY)


def test_custom_module_arch(class_folders, tmp_path):
    def small_cnn(n_out: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, n_out),
        )
    learn = easycls.fit(str(class_folders), **{**TINY, "arch": small_cnn}, out=str(tmp_path / "r"))
    # recorded by import path (custom:<module>:<qualname>); a local function cannot be imported
    arch = learn.easycls.bundle_meta["arch"]
    assert arch.startswith("custom:test_fit:") and arch.endswith("small_cnn")
    p = easycls.load(tmp_path / "r", model=small_cnn(3), device="cpu")
    assert p.predict(str(next((class_folders / "fox").iterdir())))[0] in {"cat", "dog", "fox"}


@pytest.mark.slow
def test_digits_demo_reaches_095(tmp_path):
    learn = easycls.fit("digits", out=str(tmp_path / "digits"), quiet=True)
    assert learn.easycls.metrics["accuracy"] >= 0.95
    # `easycls predict` on the held-out images labels them right at the same rate.
    from easycls.data.builtin import materialize
    valid = materialize("digits") / "valid"
    out_csv = tmp_path / "preds.csv"
    subprocess.run(
        ["easycls", "predict", str(tmp_path / "digits"), str(valid), "--csv", str(out_csv)],
        check=True,
    )
    rows = list(csv.DictReader(out_csv.open()))
    hits = [r["label"] == r["file"].split("/")[-2] for r in rows]
    assert (
        len(rows) == 360 and abs(sum(hits) / len(hits) - learn.easycls.metrics["accuracy"]) < 1e-6
    )


def test_channels_last_on_cpu_for_depthwise_models_and_bundle_still_loads(class_folders, tmp_path):
    learn = easycls.fit(str(class_folders), out=str(tmp_path / "r"),
                        **{**TINY, "arch": "mobilenetv3_small_050"})
    convs = [m.weight for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    probs, _ = learn.get_preds(ds_idx=1)
    again = easycls.load(tmp_path / "r", device="cpu").probabilities(
        learn.dls.valid.dataset.pixels.refs
    )
    np.testing.assert_allclose(again, probs.numpy(), atol=1e-4)


def test_channels_last_stays_off_on_cpu_without_depthwise_convs(trained):
    learn, _, _ = trained  # resnet18
    conv = next(m.weight for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.is_contiguous()


def test_bf16_on_cpu_autocasts_training_steps_only(class_folders, tmp_path):
    from fastai.callback.core import Callback

    class Dtypes(Callback):
        def __init__(self):
            self.seen = {True: set(), False: set()}

        def after_pred(self):  # before CpuBf16 (order 10) casts the prediction back
            self.seen[self.training].add(self.pred.dtype)

    spy = Dtypes()
    learn = easycls.fit(str(class_folders), out=str(tmp_path / "r"), mixed_precision="bf16",
                        cbs=[spy], **TINY)
    assert spy.seen == {True: {torch.bfloat16}, False: {torch.float32}}
    assert not torch.is_autocast_enabled("cpu")  # nothing runs in bf16 after the fit
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())
    probs, _ = learn.get_preds(ds_idx=1)
    again = easycls.load(tmp_path / "r", device="cpu").probabilities(
        learn.dls.valid.dataset.pixels.refs)
    np.testing.assert_allclose(again, probs.numpy(), atol=1e-4)  # fit scores as predict does


def test_a_bf16_step_with_non_finite_gradients_is_taken_again_in_float32(tmp_path):
    from fastai.callback.core import Callback

    from easycls.callbacks import CpuBf16

    class NanInBf16(torch.nn.Module):  # what oneDNN's bf16 kernels now and then give
        def __init__(self, n_out: int):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(n_out)
            self.lin = torch.nn.Linear(3 * 8 * 8, n_out)

        def forward(self, x):
            out = self.lin(x.flatten(1))
            # NaN already in the forward pass: batch norm's running statistics take it too
            return self.norm(out * float("nan") if torch.is_autocast_enabled("cpu") else out)

    class Steps(Callback):
        order = 90  # after CpuBf16's check: what the optimizer is given

        def __init__(self):
            self.finite = []

        def before_step(self):
            self.finite.append(all(bool(torch.isfinite(p.grad).all())
                                   for p in self.model.parameters()))

    steps = Steps()
    run = dict(arch=NanInBf16, size=8, epochs=1, bs=256, lr=1e-2, quiet=True)
    with pytest.warns(UserWarning, match="non-finite gradients at epoch 0, batch 0"):
        learn = easycls.fit("digits", mixed_precision="bf16", out=str(tmp_path / "r"),
                            cbs=[steps], **run)
    (bf16,) = [cb for cb in learn.cbs if isinstance(cb, CpuBf16)]
    assert bf16.fell_back == (0, 0) and steps.finite and all(steps.finite)
    recorded = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert recorded["mixed_precision"] == "bf16" and recorded["bf16_to_float32_at"] == [0, 0]
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert all(torch.isfinite(b).all() for b in learn.model.buffers())  # put back, then float32
    # every step, the first included, was what a float32 run takes
    plain = easycls.fit("digits", mixed_precision="no", out=str(tmp_path / "f32"), **run)
    for mine, theirs in zip(learn.model.state_dict().values(), plain.model.state_dict().values()):
        torch.testing.assert_close(mine, theirs)


def test_final_scores_reuse_the_last_epochs_validation_and_match_a_fresh_pass(trained):
    learn, out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    probs, targets = learn.get_preds(ds_idx=1)  # the returned Learner, scored afresh
    assert metrics["accuracy"] == pytest.approx(float((probs.argmax(1) == targets).float().mean()))
    assert metrics["valid_loss"] == pytest.approx(
        float(torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), targets)), rel=1e-4)
    seen = [cb for cb in learn.cbs if type(cb).__name__ == "LastValidation"]
    assert not seen  # the fit's own callback left with the fit
    history = list(csv.DictReader((out / "history.csv").open()))
    assert float(history[-1]["accuracy"]) == pytest.approx(metrics["accuracy"])
