"""Each regularization knob (wd, l1, ps, label_smoothing) changes training, and in the right
direction.

Every run uses the same data, seed and schedule; a knob is judged against a baseline that is
first shown to repeat exactly, so any difference is the knob's doing. Custom `nn.Module`
factories (`arch=callable`) keep these runs to a second or two each.
"""

from __future__ import annotations

import pytest
import torch
from conftest import write_class_folders
from torch import nn

from easycls import fit


def tiny_cnn(n_classes: int) -> nn.Module:
    """A 2-conv CNN: `fit(arch=tiny_cnn)` builds it for the data's class count."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, n_classes))


BASE = dict(pretrained=False, epochs=1, size=16, bs=8, lr=1e-2, augment=False, seed=7, quiet=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("reg") / "pets", per_class=12)


def _weights(data, tmp_path, name: str, arch=tiny_cnn, **knobs) -> torch.Tensor:
    learn = fit(str(data), arch=arch, out=str(tmp_path / name), **{**BASE, **knobs})
    return torch.cat(
        [p.detach().flatten() for n, p in learn.model.named_parameters() if p.ndim > 1]
    )


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    first = _weights(data, tmp, "a", wd=0.0)
    second = _weights(data, tmp, "b", wd=0.0)
    assert torch.equal(first, second), "same seed and settings must give identical weights"
    return first


def test_weight_decay_shrinks_weights(data, tmp_path, baseline):
    decayed = _weights(data, tmp_path, "wd", wd=5.0)
    assert not torch.equal(decayed, baseline)
    assert decayed.norm() < baseline.norm()


def test_l1_shrinks_the_l1_norm(data, tmp_path, baseline):
    sparse = _weights(data, tmp_path, "l1", wd=0.0, l1=1e-2)
    assert sparse.abs().sum() < baseline.abs().sum()


def test_label_smoothing_changes_training(data, tmp_path, baseline):
    smoothed = _weights(data, tmp_path, "ls", wd=0.0, label_smoothing=0.3)
    assert not torch.equal(smoothed, baseline)


def test_head_dropout_changes_training(data, tmp_path):
    # ps reaches timm's classifier dropout (drop_rate); compare two timm runs.
    plain = _weights(data, tmp_path, "ps0", arch="test_resnet", wd=0.0, ps=0.0)
    dropped = _weights(data, tmp_path, "ps5", arch="test_resnet", wd=0.0, ps=0.5)
    assert not torch.equal(plain, dropped)


def test_custom_module_instance_and_callable(data, tmp_path):
    from easycls import load
    instance = tiny_cnn(3)
    learn = fit(str(data), arch=instance, out=str(tmp_path / "inst"), **BASE)
    assert learn.model is instance  # trained in place, not rebuilt from its name
    predictor = load(tmp_path / "inst", model=tiny_cnn(3))
    label, prob = predictor.predict(next((data / "cat").iterdir()))
    assert label in ("cat", "dog", "fox") and 0 <= prob <= 1
    with pytest.raises(ValueError, match="custom model"):
        load(tmp_path / "inst")
