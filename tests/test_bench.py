"""`easycls bench`: tiny CPU runs, including the DDP scaling path with 1 and 2 processes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from easycls.bench import (
    format_budget_table,
    format_table,
    pipeline_rate,
    plot_budget,
    plot_results,
    synthetic_folder,
    train_step_rate,
)
from easycls.cli import app


class _Clock:
    """perf_counter that advances one second per call: a timed span is one second."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_train_step_rate_counts_the_timed_steps_only(monkeypatch):
    import easycls.bench as b
    monkeypatch.setattr(b.time, "perf_counter", _Clock())
    # 3 timed steps of 4 images in one (fake) second; the warm-up step is not counted
    assert train_step_rate("resnet18", size=16, bs=4, steps=3, warmup=1, device="cpu") == 12.0


def test_pipeline_rate_counts_images_after_the_warm_up_pass(tmp_path, monkeypatch):
    import easycls.bench as b
    from easycls.config import TrainConfig
    from easycls.data.prepare import build_dataloaders
    src = synthetic_folder(tmp_path, n=24, n_classes=3, side=32)
    dl = build_dataloaders(TrainConfig(source=str(src), size=16, bs=4, pretrained=False)).train
    xb, yb = dl.one_batch()
    assert xb.shape == (4, 3, 16, 16) and yb.shape == (4,)
    per_pass = sum(len(x) for x, _ in dl)
    monkeypatch.setattr(b.time, "perf_counter", _Clock())
    assert pipeline_rate(dl, passes=2) == 2 * per_pass


def test_loader_cost_and_wait_on_real_loaders(tmp_path, monkeypatch):
    import easycls.bench as b
    from easycls.config import TrainConfig
    from easycls.data.prepare import build_dataloaders
    src = synthetic_folder(tmp_path, n=40, n_classes=3, side=32)
    dls = build_dataloaders(TrainConfig(source=str(src), size=16, bs=4, pretrained=False))
    assert dls.train.batch_level  # the cached path gathers whole batches
    per_pass = sum(len(x) for x, _ in dls.train)
    monkeypatch.setattr(b.time, "perf_counter", _Clock())
    monkeypatch.setattr(b.time, "process_time", _Clock())
    cost = b.loader_cost(dls.train, passes=2)
    assert cost == dict(images_per_s=2 * per_pass, images_per_cpu_second=2 * per_pass)
    monkeypatch.undo()
    wait = b.loader_wait(dls, "resnet18", steps=4, n_classes=dls.c)
    assert wait["steps"] == 3  # 4 trained, the first left out
    assert 0 <= wait["wait_fraction"] and wait["step_seconds"] > 0


def test_table_and_plot(tmp_path):
    result = dict(arch="resnet18", size=16, bs=4, device="cpu", train_step=100.0, pipeline=500.0,
                  scaling=[dict(processes=1, images_per_s=50.0, efficiency=1.0),
                           dict(processes=2, images_per_s=80.0, efficiency=0.8)])
    table = format_table(result)
    assert "end to end, 2 process(es)" in table and "0.80" in table
    result.update(
        loader_per_core=250.0, cores_needed=0.4, loader_wait=dict(steps=7, wait_fraction=0.031)
    )
    table = format_table(result)
    assert "input pipeline, per core" in table and "250.0" in table
    assert "loader wait per step: 3.1 % of the step time (7 steps of resnet18)" in table
    assert "CPU cores needed to feed the train step: 0.40" in table
    assert plot_results(result, tmp_path / "b.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_bench_processes_1_2(tmp_path):
    """The CI-sized scaling run: end to end through `fit` with 1 and 2 (DDP, gloo) processes."""
    out = tmp_path / "bench"
    src = synthetic_folder(tmp_path, n=32, n_classes=2, side=24)
    res = CliRunner().invoke(
        app,
        [
            "bench",
            str(src),
            "--arch",
            "resnet18",
            "--size",
            "16",
            "--bs",
            "4",
            "--steps",
            "2",
            "--processes",
            "1,2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "end to end, 2 process(es)" in res.output
    data = json.loads((out / "bench.json").read_text())
    assert [r["processes"] for r in data["scaling"]] == [1, 2]
    assert data["scaling"][0]["efficiency"] == pytest.approx(1.0)
    one, two = data["scaling"]
    assert two["efficiency"] == pytest.approx(two["images_per_s"] / (2 * one["images_per_s"]))
    assert (out / "bench.png").exists()
    assert "loader wait per step" in res.output and "CPU cores needed" in res.output
    assert data["loader_wait"]["steps"] > 0 and data["loader_wait"]["wait_fraction"] >= 0
    assert data["loader_per_core"] > 0
    assert data["cores_needed"] == pytest.approx(data["train_step"] / data["loader_per_core"])


def test_cli_bench_rejects_bad_processes(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--processes", "one,two", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "comma-separated" in res.output


def test_budget_table_and_plot(tmp_path):
    runs = [dict(processes=1, epochs=3, images_per_s=100.0, efficiency=1.0, metric="accuracy",
                 score=0.81, train_seconds=50.2, total_seconds=58.9, within_budget=True),
            dict(processes=2, epochs=5, images_per_s=170.0, efficiency=0.85, metric="accuracy",
                 score=0.88, train_seconds=51.0, total_seconds=60.4, within_budget=False)]
    result = dict(arch="resnet18", size=32, bs=16, device="cpu (2 cores)",
                  time_budget_seconds=60.0, scaling=runs)
    lines = format_budget_table(result).splitlines()
    assert lines[0].startswith("60 s of wall time each: resnet18 32px bs 16 per process")
    assert lines[1].split() == ["processes", "epochs", "images/s", "efficiency", "accuracy",
                                "train", "s", "total", "s", "within", "budget"]
    assert lines[2].split() == ["1", "3", "100.0", "1.00", "0.8100", "50.2", "58.9", "yes"]
    assert lines[3].split() == ["2", "5", "170.0", "0.85", "0.8800", "51.0", "60.4", "NO"]
    assert plot_budget(result, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_rejects_a_bad_budget(tmp_path):
    res = CliRunner().invoke(app, ["bench", "--time-budget", "soon", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--time-budget: cannot read the duration 'soon'" in res.output


@pytest.mark.slow
def test_cli_bench_at_a_fixed_wall_time(tmp_path):
    """Each process count trains the same data under the same budget; both runs are kept
    as run directories and compared. Budgets against wall time: fake clocks in test_budget."""
    from easycls.compare import read_run
    out = tmp_path / "bench"
    src = synthetic_folder(tmp_path, n=48, n_classes=3, side=24)
    res = CliRunner().invoke(app, ["bench", str(src), "--arch", "test_resnet", "--size", "16",
                                   "--bs", "8", "--processes", "1,2", "--time-budget", "10s",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "10 s of wall time each" in res.output and "within budget" in res.output
    data = json.loads((out / "bench.json").read_text())
    assert data["time_budget_seconds"] == 10 and "train_step" not in data
    one, two = data["scaling"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["efficiency"] == 1.0
    assert two["efficiency"] == pytest.approx(two["images_per_s"] / (2 * one["images_per_s"]))
    for r in (one, two):
        run = read_run(r["run_dir"])
        assert run.metrics["time_budget_seconds"] == 10 and r["epochs"] == len(run.history) >= 1
        assert r["score"] == run.metrics["accuracy"] and r["processes"] == run.metrics["processes"]
        assert r["within_budget"] == (run.metrics["total_seconds"] <= 10)
    assert {"bench.png", "compare.md", "compare.csv", "compare.png"} <= {
        p.name for p in out.iterdir()}
    assert "| p1 |" in (out / "compare.md").read_text()


@pytest.mark.slow
def test_cli_bench_says_why_a_run_failed(tmp_path):
    res = CliRunner().invoke(app, ["bench", str(tmp_path / "nowhere"), "--processes", "1",
                                   "--time-budget", "5s", "--out", str(tmp_path / "b")])
    assert res.exit_code == 1
    assert "`easycls fit` with 1 process(es) failed (exit 2): error:" in res.output
    assert (tmp_path / "b" / "runs" / "p1.log").exists()
