"""The learning-rate choice: bounded cost, defaults per mode, robust suggestions (fakes, no
timing)."""

from __future__ import annotations

import math

import pytest

from easycls.lr_search import (
    FULL_SEARCH_ITERS,
    MIN_SEARCH_ITERS,
    SEARCH_SHARE,
    choose_lr,
    default_lr,
    robust_lr,
    search_iterations,
)


class FakeLearn:
    """Records the lr_find calls; suggests `lrs` (valley, slide, minimum)."""

    def __init__(self, lrs=(4e-3, 5e-3, 6e-2)):
        self.calls, self.lrs = [], lrs

    def lr_find(self, num_it, show_plot, suggest_funcs, start_lr, end_lr):
        self.calls.append(dict(num_it=num_it, start_lr=start_lr, end_lr=end_lr))
        return tuple(self.lrs)


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.5
        return self.t


def test_search_never_takes_more_than_its_share_of_the_planned_steps():
    for steps in (10, 66, 320, 400, 1000, 2000, 10**6):
        n = search_iterations(steps)
        assert n <= SEARCH_SHARE * steps and n <= FULL_SEARCH_ITERS
        assert n == 0 or n >= MIN_SEARCH_ITERS
    assert search_iterations(66) == 0  # 3 epochs of 22 batches: no search at all
    assert search_iterations(1000) == 50
    assert search_iterations(10**6) == FULL_SEARCH_ITERS


def test_short_run_uses_the_default_without_probing():
    learn = FakeLearn()
    choice = choose_lr(learn, lr=None, fine_tune=False, total_bs=64, planned_steps=66)
    assert learn.calls == [] and choice.how.startswith("default") and choice.iterations == 0
    assert choice.lr == default_lr(False, 64)
    assert "default" in choice.summary()


def test_bounded_search_probes_at_most_the_share_around_the_default():
    learn = FakeLearn()
    choice = choose_lr(learn, lr=None, fine_tune=False, total_bs=64, planned_steps=800,
                       clock=FakeClock())
    (call,) = learn.calls
    assert call["num_it"] == 40 <= SEARCH_SHARE * 800
    assert call["start_lr"] < default_lr(False, 64) < call["end_lr"]
    assert choice.how == "search" and choice.iterations == 40 and choice.seconds == 1.5
    assert choice.lr == pytest.approx(5e-3)  # median of 4e-3, 5e-3 and a tenth of 6e-2
    assert "40 iterations, 1.5 s" in choice.summary()


def test_full_search_is_fastais_lr_find_whatever_the_run_length():
    learn = FakeLearn()
    choice = choose_lr(learn, lr="find", fine_tune=True, total_bs=64, planned_steps=20)
    assert learn.calls[0]["num_it"] == FULL_SEARCH_ITERS and learn.calls[0]["start_lr"] == 1e-7
    assert choice.how == "full search" and choice.lr == 4e-3  # fastai's valley


def test_given_lr_is_used_as_is_and_agree_shares_rank0s_choice():
    assert choose_lr(FakeLearn(), lr=3e-4, fine_tune=True, total_bs=64, planned_steps=10).lr == 3e-4
    chosen = choose_lr(FakeLearn(), lr=None, fine_tune=False, total_bs=64, planned_steps=2000,
                       agree=lambda v: 1.234e-3)
    assert chosen.lr == 1.234e-3


def test_default_lr_per_mode_and_total_batch():
    assert default_lr(True, 64) < default_lr(False, 64)
    assert default_lr(False, 256) == pytest.approx(2 * default_lr(False, 64))  # sqrt scaling
    assert default_lr(False, 2 * 32) == default_lr(False, 64)  # 2 processes x 32 = one of 64


def test_suggestions_that_disagree_or_stray_fall_back_to_the_default():
    assert robust_lr([1e-3, 1.2e-3, 0.9e-3], 2e-3)[0] == pytest.approx(1e-3)
    lr, note = robust_lr([1e-5, 1e-2, 3e-3], 2e-3)
    assert lr == 2e-3 and "disagree" in note
    lr, note = robust_lr([1.0, 1.1, 0.9], 2e-3)
    assert lr == 2e-3 and "far from the default" in note
    assert robust_lr([math.nan, None], 2e-3)[0] == 2e-3


def test_lr_option_takes_a_number_or_find():
    from easycls.config import ConfigError, TrainConfig, check
    assert check("lr", "find") == "find" and check("lr", "FIND") == "find"
    assert check("lr", "2e-3") == 2e-3 and check("lr", 0.01) == 0.01
    with pytest.raises(ConfigError, match="number or 'find'"):
        check("lr", "fast")
    with pytest.raises(ConfigError):
        check("lr", "-1")
    assert TrainConfig().lr is None and TrainConfig().bs is None


@pytest.mark.slow
def test_fit_without_lr_uses_the_default_and_says_so(class_folders, tmp_path, capsys):
    import json

    from easycls import fit
    out = tmp_path / "run"
    fit(str(class_folders), arch="resnet18", pretrained=False, epochs=1, size=16, out=str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert metrics["lr_choice"].startswith("default") and metrics["lr_search_seconds"] == 0
    assert config["lr"] == pytest.approx(default_lr(False, config["bs"]))
    assert config["bs"] == 16  # 29 training images: the smallest default batch
    assert f"lr {config['lr']:.2e} (default" in capsys.readouterr().out
