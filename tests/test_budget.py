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
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == metrics["planned_epochs"]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run_epoch(
    cb, learn, clock, epoch: int, step: float, n_iter: int = 10, valid: float = 0.0
) -> None:
    learn.epoch, learn.n_iter, learn.training = epoch, n_iter, True
    cb.before_epoch()
    cb.before_train()
    for i in range(n_iter):
        clock.now += step
        learn.iter = i
        cb.after_batch()
    learn.training = False
    cb.before_validate()
    clock.now += valid
    cb.after_validate()
    cb.after_epoch()


def test_budget_replans_when_speed_changes(monkeypatch):
    from types import SimpleNamespace

    from fastai.callback.core import CancelFitException

    from easycls import budget as b

    clock = _Clock()
    monkeypatch.setattr(b.time, "perf_counter", clock)
    dls = SimpleNamespace(
        train=SimpleNamespace(dataset=range(80)), valid=SimpleNamespace(dataset=range(20))
    )
    learn = SimpleNamespace(dl=None, dls=dls, n_epoch=b.UNBOUNDED_EPOCHS, pct_train=0.0)
    cb = b.TimeBudget(100.0, t_start=0.0, first_guess=3, reserve=0.0)
    cb.learn = learn
    _run_epoch(cb, learn, clock, 0, step=1.0)  # 10 s per epoch: ten fit in 100 s
    assert cb.planned == learn.n_epoch == 10
    # slowed to 20 s per epoch: 20 s done + 60 s left = 3 more
    _run_epoch(cb, learn, clock, 1, step=2.0)
    assert cb.planned == 5 and cb.replans >= 1
    for e in (2, 3, 4):
        _run_epoch(cb, learn, clock, e, step=2.0)
    with pytest.raises(CancelFitException):  # the planned count is reached: the fit ends
        learn.epoch = 5
        cb.before_epoch()
    assert clock.now <= 100.0
