"""Data-dependent defaults: the batch size gives short runs enough optimizer steps."""

from __future__ import annotations

from easycls.plan import MAX_BS, MIN_BS, MIN_STEPS, default_bs


def test_default_batch_gives_small_datasets_enough_steps_per_epoch():
    assert default_bs(1392) == 32 and 1392 // 32 >= MIN_STEPS
    assert default_bs(500) == MIN_BS  # never below the floor, even when steps stay few
    assert default_bs(100_000) == MAX_BS


def test_default_batch_counts_every_process():
    assert default_bs(1392, world_size=2) == 16
    assert default_bs(100_000, world_size=8) == MAX_BS


def test_augmentation_by_default_only_where_it_pays():
    from easycls.plan import AUGMENT_FROM_EPOCHS, default_augment

    short = dict(fine_tune=False, epochs=3, time_budget=None)
    assert default_augment(None, **short) is False  # a short run from scratch: off
    assert default_augment(None, **{**short, "epochs": AUGMENT_FROM_EPOCHS}) is True
    assert default_augment(None, **{**short, "fine_tune": True}) is True
    assert default_augment(None, **{**short, "time_budget": 60.0}) is None  # decided live
    assert default_augment(True, **short) is True
    assert default_augment(False, fine_tune=True, epochs=50, time_budget=None) is False


def test_fit_resolves_augmentation_into_its_config():
    from easycls.train import resolve_config

    assert resolve_config("x", pretrained=False, epochs=3).augment is False
    assert resolve_config("x", pretrained=True, epochs=3).augment is True
    assert resolve_config("x", pretrained=False, time_budget="2m").augment is None
    assert resolve_config("x", pretrained=False, augment=True).augment is True


def test_augmentation_off_shows_the_validation_view():
    import torch
    import torch.nn.functional as F
    from fastai.torch_core import TensorImage

    from easycls.data.augment import BatchAugment

    x = TensorImage(torch.rand(4, 3, 73, 73))
    aug = BatchAugment(64)
    aug.enabled = False
    out = aug(x, split_idx=0)
    expected = F.interpolate(x.as_subclass(torch.Tensor), size=(64, 64), mode="bilinear",
                             antialias=True, align_corners=False)
    assert out.shape == (4, 3, 64, 64) and torch.equal(out.as_subclass(torch.Tensor), expected)
    same = TensorImage(torch.rand(2, 3, 64, 64))
    assert torch.equal(aug(same, split_idx=0), same)  # already the size: untouched
    aug.enabled = True
    assert not torch.equal(aug(x, split_idx=0).as_subclass(torch.Tensor), expected)


def test_live_augmentation_follows_the_planned_epochs():
    from types import SimpleNamespace

    from easycls.data.augment import AugmentWhenLong, BatchAugment

    aug = BatchAugment(32)
    learn = SimpleNamespace(training=True, n_epoch=3,
                            dls=SimpleNamespace(train=SimpleNamespace(
                                after_batch=SimpleNamespace(fs=[object(), aug]))))
    cb = AugmentWhenLong(10)
    cb.learn = learn
    cb.before_fit()
    assert cb.augments == [aug]  # found once, in the training loader's batch transforms
    cb.before_batch()
    assert aug.enabled is False and cb.used is False  # a 3-epoch plan: off
    learn.n_epoch = 12  # the budget re-planned a longer run
    cb.before_batch()
    assert aug.enabled is True and cb.used is True
    learn.n_epoch, learn.training = 3, False
    cb.before_batch()  # validation batches decide nothing
    assert aug.enabled is True
    learn.training = True
    cb.before_batch()
    cb.after_fit()
    assert aug.enabled is True and cb.used is False
