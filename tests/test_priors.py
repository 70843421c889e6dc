"""Bias init from label frequencies: the untrained model predicts the prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from easycls.learners import create_model
from easycls.priors import init_output_bias, label_prior_logits


def _targets(freqs, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, len(freqs))) < np.array(freqs)).astype(np.float32)


def test_mean_sigmoid_of_an_untrained_model_is_the_label_frequency():
    freqs = [0.5, 0.2, 0.05, 0.01]
    targets = _targets(freqs)
    torch.manual_seed(0)
    model = create_model("resnet18", n_out=4, pretrained=False).eval()
    x = torch.randn(16, 3, 32, 32)
    assert init_output_bias(model, targets)
    with torch.no_grad():
        mean_prob = torch.sigmoid(model(x)).mean(0).numpy()
    # a freshly initialized head adds small noise around its bias; the prior dominates
    assert mean_prob == pytest.approx(targets.mean(0), abs=0.06)
    assert mean_prob[3] < 0.05 < 0.4 < mean_prob[0]


def test_prior_logits_stay_finite_for_labels_never_or_always_seen():
    logits = label_prior_logits(np.array([[1, 0], [1, 0], [1, 0]]))
    assert torch.isfinite(logits).all() and logits[0] > 0 > logits[1]


def test_model_without_a_matching_output_layer_is_left_alone():
    model = nn.Sequential(nn.Linear(3, 5, bias=False))
    before = model[0].weight.clone()
    assert not init_output_bias(model, np.zeros((4, 5)))
    assert torch.equal(model[0].weight, before)
