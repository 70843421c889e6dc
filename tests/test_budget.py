"""Wall-time budgets: duration parsing, and a run that plans its epochs to end inside the budget."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import write_class_folders

from easycls.config import parse_duration
from easycls.train import fit  # imported here: import time is not training time


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45), ("1.5m", 90)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5y", "0s", "m"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ValueError, match="90s, 30m, 2h"):
        parse_duration(text)


@pytest.mark.slow
def test_budget_run_records_its_plan_with_all_artifacts(tmp_path):
    """The budget's facts reach metrics.json and history.csv. How well the plan fits the
    budget is tested with a fake clock below; wall time on a shared machine says nothing."""
    data = write_class_folders(tmp_path / "pets", per_class=20)
    out = tmp_path / "run"
    budget = 8.0
    fit(str(data), out=str(out), arch="mobilenetv3_small_050", pretrained=False, epochs=2,
        size=32, bs=8, lr=2e-3, quiet=True, workers=0, time_budget=budget)
    assert {"model.safetensors", "model.json", "metrics.json", "history.csv",
            "config.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoint.pth").exists()  # a completed run keeps no resume state
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_budget_seconds"] == budget and metrics["planned_epochs"] >= 1
    # from scratch under a budget, augmentation was decided live from the plan
    assert metrics["augment"] is (metrics["planned_epochs"] >= 10)
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == metrics["planned_epochs"]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake_learn(n_train: int = 80, n_valid: int = 20):
    from types import SimpleNamespace

    from easycls import budget as b

    dls = SimpleNamespace(
        train=SimpleNamespace(dataset=range(n_train)), valid=SimpleNamespace(dataset=range(n_valid))
    )
    return SimpleNamespace(dl=None, dls=dls, n_epoch=b.UNBOUNDED_EPOCHS, pct_train=0.0,
                           train_iter=0, epoch=0, iter=0, training=False)


def _fit(cb, learn, clock, steps, n_iter: int = 10, valid: float = 0.0) -> list[float]:
    """fastai's loop as the budget sees it, with TrainEvalCallback's bookkeeping; `steps(epoch,
    i)` is the seconds batch i of that epoch takes. Returns the schedule position of every batch."""
    from fastai.callback.core import CancelFitException, CancelTrainException

    positions: list[float] = []
    learn.pct_train, learn.train_iter = 0.0, 0
    cb.before_fit()
    try:
        for epoch in range(10_000):
            learn.epoch = epoch
            cb.before_epoch()
            learn.pct_train, learn.training = epoch / learn.n_epoch, True  # TrainEvalCallback
            learn.dl = range(n_iter)
            cb.before_train()
            learn.n_iter = n_iter  # fastai sets it once before_train has run
            try:
                for i in range(n_iter):
                    learn.iter = i
                    positions.append(learn.pct_train)  # what ParamScheduler reads for this batch
                    clock.now += steps(epoch, i)
                    learn.pct_train += 1.0 / (n_iter * learn.n_epoch)  # TrainEvalCallback
                    learn.train_iter += 1
                    cb.after_batch()
            except CancelTrainException:
                pass
            learn.training, learn.n_iter = False, 3  # the validation loader's batches
            cb.before_validate()
            clock.now += valid
            cb.after_validate()
            cb.after_epoch()
    except CancelFitException:
        pass
    return positions


def _budget(monkeypatch, seconds: float, **kw):
    from easycls import budget as b

    clock = _Clock()
    monkeypatch.setattr(b.time, "perf_counter", clock)
    learn = _fake_learn()
    cb = b.TimeBudget(seconds, t_start=0.0, first_guess=3, reserve=0.0, **kw)
    cb.learn = learn
    return cb, learn, clock


def test_budget_replans_when_speed_changes(monkeypatch):
    cb, learn, clock = _budget(monkeypatch, 100.0)
    # 10 s an epoch for two epochs (ten would fit), then 20 s an epoch: four more fit.
    positions = _fit(cb, learn, clock, lambda e, i: 1.0 if e < 2 else 2.0)
    assert cb.replans >= 2 and not cb.ended_early
    assert learn.epoch == cb.planned == 6  # the fit stopped before a seventh epoch
    assert clock.now <= 100.0
    assert all(a <= b for a, b in zip(positions, positions[1:]))  # the schedule never goes back
    assert learn.pct_train == 1.0  # and it completed


def test_steady_run_ends_its_schedule_on_the_planned_last_batch(monkeypatch):
    cb, learn, clock = _budget(monkeypatch, 100.0)
    positions = _fit(cb, learn, clock, lambda e, i: 1.0)
    assert cb.planned == 10 and len(positions) == 100 and not cb.ended_early
    assert positions[0] == 0.0 and learn.pct_train == 1.0
    # Once the plan is settled (the probe's guess counts a validation the fake does not
    # take), the positions are evenly spaced, like fastai's own schedule.
    steps = [b - a for a, b in zip(positions[10:], positions[11:])]
    assert max(steps) - min(steps) < 1e-9
    assert clock.now == pytest.approx(100.0)


def test_max_epochs_caps_the_plan_and_the_schedule_still_completes(monkeypatch):
    cb, learn, clock = _budget(monkeypatch, 100.0, max_epochs=4)  # ten epochs would fit
    positions = _fit(cb, learn, clock, lambda e, i: 1.0)
    assert cb.planned == 4 and len(positions) == 40 and learn.pct_train == 1.0
    slow, learn, clock = _budget(monkeypatch, 100.0, max_epochs=40)  # the budget binds
    _fit(slow, learn, clock, lambda e, i: 1.0)
    assert slow.planned == 10 and clock.now <= 100.0


def test_the_last_epoch_is_cut_short_rather_than_the_budget_left_unused(monkeypatch):
    cb, learn, clock = _budget(monkeypatch, 95.0)
    positions = _fit(cb, learn, clock, lambda e, i: 1.0)
    # nine full epochs of 10 steps and half of a tenth: the schedule ends on its last step
    assert len(positions) == 95 and cb.planned == 10 and cb.planned_steps == 95
    assert learn.pct_train == 1.0 and not cb.ended_early
    assert clock.now == pytest.approx(95.0)


def test_a_slowdown_in_the_last_epoch_compresses_the_schedule_and_keeps_the_deadline(monkeypatch):
    cb, learn, clock = _budget(monkeypatch, 100.0)
    # Ten epochs are planned from 1 s steps; the machine then slows 4x in the middle of
    # the last one: the schedule runs on time, not on steps, and training stops in time.
    positions = _fit(cb, learn, clock, lambda e, i: 1.0 if (e, i) < (9, 3) else 4.0)
    assert cb.ended_early and learn.pct_train == 1.0
    assert clock.now <= 100.0 + 4.0  # at most the one batch that was running
    assert len(positions) < 100
    assert all(a <= b for a, b in zip(positions, positions[1:]))


def test_validation_and_the_test_split_are_paid_for_before_the_deadline(monkeypatch):
    planned = {}
    for tail in (0, 400):
        cb, learn, clock = _budget(monkeypatch, 100.0, tail_items=tail)
        _fit(cb, learn, clock, lambda e, i: 1.0, valid=2.0)
        # after training: one more validation pass, plus 400 test images at 2 s / 20 images
        tail_seconds = 2.0 + (2.0 / 20) * tail
        assert clock.now + tail_seconds <= 100.0 + 1e-9
        planned[tail] = cb.planned
    assert planned[400] < planned[0]


def test_a_reused_last_validation_leaves_its_time_to_training(monkeypatch):
    steps = {}
    for final_pass in (True, False):
        cb, learn, clock = _budget(monkeypatch, 100.0, final_pass=final_pass)
        _fit(cb, learn, clock, lambda e, i: 1.0, valid=5.0)
        # with the final pass: its 5 s are kept back after training; without: trained
        assert clock.now + (5.0 if final_pass else 0.0) <= 100.0 + 1e-9
        steps[final_pass] = cb.planned_steps
    assert steps[False] == steps[True] + 5


def test_several_processes_decide_on_rank_0s_clock_every_few_batches(monkeypatch):
    asked = []

    def agree(value):  # rank 0's answer: its clock says the time is up after 30 s
        if isinstance(value, float):
            asked.append(value)
            return 1.0 if clock.now >= 33.0 else value
        return value

    cb, learn, clock = _budget(monkeypatch, 100.0, check_every=5, agree=agree)
    positions = _fit(cb, learn, clock, lambda e, i: 1.0)
    # Locally 100 steps fit; rank 0's clock ends the schedule at the first agreed batch
    # after 33 s, the 35th (a multiple of 5), so every rank stops at the same one.
    assert cb.ended_early and learn.pct_train == 1.0 and len(positions) == 35
    assert len(asked) == 35 // 5  # the clock is asked every 5th batch, from the first plan


def test_the_cli_counts_a_budget_from_the_process_start(monkeypatch):
    import time

    import psutil

    from easycls import budget as b
    from easycls import cli, train

    monkeypatch.setattr(b, "_from_process_start", False)
    now = time.perf_counter()
    assert b.budget_origin(now) == now  # in Python: from the fit call
    seen = []
    monkeypatch.setattr(train, "fit", lambda *a, **k: seen.append(b.budget_origin(now)))
    cli.fit_cmd("digits")
    # the command: from the process start. This process imported torch before the test, so
    # it is older than a second; psutil's age is up to a second too long (whole-second boot
    # time), never too short
    (origin,) = seen
    age = now - origin
    assert 1.0 < age <= time.time() - psutil.Process().create_time() + 0.05
    assert age == pytest.approx(b.process_age() - (time.perf_counter() - now), abs=0.05)
    # and only for that command: a later fit in the same process (a notebook, a test) counts
    # from its own call again, so its train_seconds and checkpoints do not hold the process age
    assert b.budget_origin(now) == now


def test_a_process_age_to_the_tick():
    import subprocess
    import sys
    import time

    # perf_counter is the system's monotonic clock, shared by parent and child: the child's
    # start, read from its age, lies between the parent's spawn and the child's answer
    # (psutil's age put it up to a second before the spawn)
    code = "import time; from easycls.budget import process_age; " \
           "print(time.perf_counter() - process_age())"
    before = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    started = float(out.stdout)
    assert before - 0.02 <= started <= time.perf_counter()


def test_a_slow_start_does_not_leave_the_budget_unused(monkeypatch):
    cb, learn, clock = _budget(monkeypatch, 70.0)
    # The first three batches run 3x slow (warm-up), then 1 s a step. Planned from the
    # probe alone (batches 1-4), the run would end inside its first epoch; re-planning
    # through the first epoch catches up and the run goes on into a second one.
    positions = _fit(cb, learn, clock, lambda e, i: 3.0 if (e, i) < (0, 3) else 1.0, n_iter=40)
    assert learn.pct_train == 1.0 and 60.0 <= clock.now <= 70.0
    assert len(positions) > 40 and cb.replans >= 3


def test_easycls_fit_counts_its_budget_from_the_process_start(monkeypatch):
    from typer.testing import CliRunner

    import easycls.train
    from easycls import budget as b
    from easycls.cli import app

    monkeypatch.setattr(b, "_from_process_start", False)
    seen = []
    monkeypatch.setattr(easycls.train, "fit",
                        lambda *a, **k: seen.append(b._from_process_start))
    result = CliRunner().invoke(app, ["fit", "digits", "--time-budget", "1m"])
    assert result.exit_code == 0, result.output
    assert seen == [True]
