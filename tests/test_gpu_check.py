"""`benchmarks/gpu_check.sh --dry`: the one-shot GPU check runs to the end on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "EASYCLS_BENCH_DATA": str(tmp_path / "data")}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SKIPPED" in done.stdout  # the CUDA-only parts say that they did not run
    result = json.loads(out.read_text())
    assert result["ok"] and result["environment"]["dry"] and not result["environment"]["cuda"]
    assert result["train_step"]["images_per_s"] > 0
    assert result["train_step"]["compiled"]["status"] == "skipped"
    data = result["data"]
    assert data["cache_loader"]["batch_level"] and data["cache_loader"]["images_per_s"] > 0
    assert data["store_loader"]["batch_level"] and data["store_loader"]["images_per_s"] > 0
    assert data["end_to_end"]["steps"] > 0 and data["end_to_end"]["wait_fraction"] >= 0
    fit = result["fit"]
    assert fit["failed_checks"] == [] and fit["run_files_missing"] == []
    assert (fit["precision"], fit["sync_batchnorm"], fit["device"]) == ("no", False, "cpu")
    assert fit["batch_level"] and fit["predicted"]
