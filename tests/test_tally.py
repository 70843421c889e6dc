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


class _Learn:
    """What a fastai metric reads of a Learner during validation (one process)."""

    def __init__(self, pred, y):
        self.pred, self.y = pred, y

    def to_detach(self, b, cpu=True, gather=True):
        return b.detach()


@pytest.mark.parametrize("k", [1, 5])
def test_running_top_k_equals_fastai_accumulated(k):
    from fastai.metrics import AccumMetric, accuracy, top_k_accuracy

    from easycls.metrics import TopKAccuracy
    g = torch.Generator().manual_seed(k)
    batches = [(torch.randn(n, 12, generator=g), torch.randint(0, 12, (n,), generator=g))
               for n in (8, 8, 5)]
    fn = accuracy if k == 1 else lambda p, t: top_k_accuracy(p, t, k=k)
    ours, theirs = TopKAccuracy(k), AccumMetric(fn, flatten=False)
    for m in (ours, theirs):
        m.reset()
        for pred, y in batches:
            m.accumulate(_Learn(pred, y))
    assert ours.value == pytest.approx(float(theirs.value))
    assert ours.name == ("accuracy" if k == 1 else "top5_accuracy")


def test_fit_scores_validation_without_keeping_its_probabilities(tmp_path):
    from conftest import TINY, write_class_folders

    import easycls
    data = write_class_folders(tmp_path / "pets", per_class=10)
    learn = easycls.fit(str(data), out=str(tmp_path / "run"), **TINY)
    rec = learn.easycls
    assert rec.valid_preds is None  # no N x classes array stays with the run
    probs, targets = learn.get_preds(ds_idx=1)
    want = single_label_metrics(probs, targets)
    for k in ("accuracy", "valid_loss", "n_valid"):
        assert rec.metrics[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert rec.confusion.sum() == len(targets)
    assert np.trace(rec.confusion) == round(want["accuracy"] * len(targets))
