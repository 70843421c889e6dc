"""Batch norm folded into the convolution before it: same outputs, fewer layers, and nothing
folded where folding would change the model."""

from __future__ import annotations

import pytest
import timm
import torch
from test_timm_families import FAMILIES
from torch import nn

from easycls import fuse
from easycls.fuse import fuse_batchnorm


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _trained_stats(model: nn.Module, size: int) -> nn.Module:
    """Running statistics and affine parameters far from their defaults, as after training."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _same(a: nn.Module, b: nn.Module, size: int) -> float:
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("arch", ["resnet10t", "mobilenetv3_small_050", "efficientnet_b0"])
def test_timm_cnns_lose_every_norm_and_keep_their_outputs(arch):
    model = _trained_stats(timm.create_model(arch, pretrained=False, num_classes=5), 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused, n = fuse_batchnorm(model, 32)
    assert n == _norms(model) > 0 and _norms(fused) == 0
    assert _same(model, fused, 32) < 1e-4
    # The model given is left as it was.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_timm_norm_act_keeps_its_activation():
    from timm.layers.norm_act import BatchNormAct2d
    model = _trained_stats(timm.create_model("efficientnet_b0", pretrained=False,
                                             num_classes=5), 32)
    norm_acts = {name: m for name, m in model.named_modules() if isinstance(m, BatchNormAct2d)}
    fused, n = fuse_batchnorm(model, 32)
    assert norm_acts and n == _norms(model)
    # Each BatchNormAct2d is now its dropout + activation, in the same place.
    for name, m in norm_acts.items():
        there = fused.get_submodule(name)
        assert isinstance(there, nn.Sequential) and type(there[1]) is type(m.act), name
    assert _same(model, fused, 32) < 1e-4


class Shortcut(nn.Module):
    """A conv whose output feeds a norm and, besides, the output: must not be folded."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class PreAct(nn.Module):
    """Norm before the convolution (registered conv first): nothing to fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


class Shared(nn.Module):
    """One norm used twice: its statistics cannot go into one conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x))


@pytest.mark.parametrize("cls", [Shortcut, PreAct, Shared])
def test_nothing_is_folded_where_it_would_change_the_model(cls):
    model = _trained_stats(cls(), 8)
    fused, n = fuse_batchnorm(model, 8)
    assert n == 0 and fused is model


def test_weight_standardized_convs_are_left_alone():
    from timm.layers import StdConv2d
    model = _trained_stats(nn.Sequential(StdConv2d(3, 4, 3), nn.BatchNorm2d(4)), 8)
    assert fuse_batchnorm(model, 8) == (model, 0)


def test_a_fold_that_changes_the_outputs_is_not_kept(monkeypatch):
    real = fuse.fuse_conv_bn_weights

    def wrong(*args):
        w, b = real(*args)
        return w, nn.Parameter(b + 1)

    monkeypatch.setattr(fuse, "fuse_conv_bn_weights", wrong)
    model = _trained_stats(timm.create_model("resnet10t", pretrained=False, num_classes=5), 32)
    fused, n = fuse_batchnorm(model, 32)
    assert n == 0 and fused is model


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval"):
        fuse_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), 8)


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_keeps_its_outputs(arch):
    from easycls.models import size_kwargs
    model = timm.create_model(arch, pretrained=False, num_classes=5, **size_kwargs(arch, 64))
    model = _trained_stats(model, 64)
    fused, _ = fuse_batchnorm(model, 64)
    assert _same(model, fused, 64) < 1e-4
