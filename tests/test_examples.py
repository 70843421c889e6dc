"""Every script in examples/ runs end to end in its --smoke mode (generated data, CPU).

Each takes a minute or more on two cores: all are `slow` (CI runs them)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(cmd: list[str], tmp_path: Path, timeout: int = 600) -> str:
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "PYTHON": sys.executable,
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_animals15_smoke(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "animals15_ddp.py"), "--smoke"], tmp_path)
    assert "validation accuracy" in out
    run = next(tmp_path.glob("animals15-smoke-*/run"))
    cfg = (run / "config.json").read_text()
    assert '"l1": 1e-06' in cfg and '"wd": 0.01' in cfg and '"augment": true' in cfg
    assert (run / "eval-animals15" / "confusion_matrix.png").exists()


@pytest.mark.slow
def test_comp5329_smoke(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "comp5329_multilabel.py"), "--smoke"], tmp_path)
    assert "F1 (samples)" in out
    run = next(tmp_path.glob("comp5329-smoke-*/run"))
    lines = (run / "my_submission.csv").read_text().splitlines()
    assert lines[0] == "ImageID,Labels" and len(lines) == 1 + 8
    assert lines[1].startswith("48.jpg,")  # test.csv's order
    assert (run / "eval-comp5329" / "f1_vs_threshold.png").exists()


@pytest.mark.slow
def test_tiny_imagenet_compare_smoke(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "tiny_imagenet_compare.py"), "--smoke"], tmp_path)
    for name in ("small_cnn", "wide_cnn", "resnet18"):
        assert name in out
    runs = next(tmp_path.glob("tiny-imagenet-smoke-*/runs"))
    table = list(csv.DictReader((runs / "compare.csv").open()))
    assert [r["run"] for r in table] == ["small_cnn", "wide_cnn", "resnet18"]
    for row in table:  # the table holds each run's own numbers
        m = json.loads((runs / row["run"] / "metrics.json").read_text())
        assert float(row["accuracy"]) == m["accuracy"]
    assert (runs / "compare.png").exists() and "parameters: small_cnn" in out


@pytest.mark.slow
def test_asl_smoke(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "asl.py"), "--smoke"], tmp_path)
    assert "speedup" in out
    assert next(tmp_path.glob("asl-smoke-*/runs/scaling.json")).exists()


@pytest.mark.slow
def test_imagenet_scaling_script_smoke(tmp_path):
    out = _run(["bash", str(EXAMPLES / "imagenet_resnet50_scaling.sh"), "--smoke"], tmp_path)
    assert "gpus epochs" in out and "benchmark:" in out
    run = next(tmp_path.glob("imagenet-smoke-*"))
    assert (run / "imagenet-r50-1gpu" / "metrics.json").exists() and (
        run / "bench" / "bench.json"
    ).exists()


@pytest.mark.slow
def test_asl_two_cpu_processes(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "asl.py"), "--smoke", "--gpus", "1,2"], tmp_path)
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
