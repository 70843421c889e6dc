"""Running single-label scores equal the all-at-once ones, batch size regardless."""

import numpy as np
import pytest
import torch

from easycls.metrics import single_label_metrics
from easycls.tally import SingleLabelTally


@pytest.mark.parametrize("n_classes", [3, 12])
def test_running_scores_equal_all_at_once(n_classes):
    rng = np.random.default_rng(n_classes)
    logits = rng.normal(0, 2, (203, n_classes))
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    targets = rng.integers(0, n_classes, 203)
    tally = SingleLabelTally(n_classes, n_worst=5, keep_probs=True)
    for s in range(0, 203, 32):
        tally.update(probs[s:s + 32], targets[s:s + 32])
    want = single_label_metrics(torch.from_numpy(probs), torch.from_numpy(targets))
    got = tally.metrics()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5), k
    expected_cm = np.zeros((n_classes, n_classes), int)
    np.add.at(expected_cm, (targets, probs.argmax(1)), 1)
    np.testing.assert_array_equal(tally.confusion, expected_cm)
    np.testing.assert_array_equal(tally.preds, probs.argmax(1))
    np.testing.assert_allclose(tally.p_pred, probs.max(1))
    losses = -np.log(probs[np.arange(203), targets])
    np.testing.assert_allclose(tally.losses, losses, rtol=1e-5)
    assert tally.worst() == list(np.argsort(-losses)[:5])
    assert tally.probs.dtype == np.float16 and tally.probs.shape == (203, n_classes)
    assert SingleLabelTally(n_classes).probs is None  # not kept unless asked
