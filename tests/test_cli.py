"""The easycls command line end to end: fit, predict, archs, --version, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from conftest import write_class_folders
from typer.testing import CliRunner

from easycls import __version__
from easycls.cli import app

runner = CliRunner()
TINY_ARGS = ["--arch", "resnet18", "--no-pretrained", "--epochs", "1", "--size", "32", "--bs", "8",
             "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = write_class_folders(tmp_path_factory.mktemp("d") / "pets", per_class=16)
    out = tmp_path_factory.mktemp("runs") / "cli-run"
    # Two epochs: after one, a from-scratch model can still sit near chance on a folder.
    args = [("2" if prev == "--epochs" else a) for prev, a in zip([None, *TINY_ARGS], TINY_ARGS)]
    # --augment as written against (test_fit.py's `trained` says why).
    result = runner.invoke(app, ["fit", str(root), "--out", str(out), *args, "--augment"])
    assert result.exit_code == 0, result.output
    return root, out


def test_fit_writes_run_directory(cli_run):
    _, out = cli_run
    assert json.loads((out / "metrics.json").read_text())["accuracy"] > 0.5
    assert json.loads((out / "config.json").read_text())["epochs"] == 2


def test_predict_files_and_folders_to_csv(cli_run, tmp_path):
    root, out = cli_run
    csv_path = tmp_path / "preds.csv"
    one = next((root / "cat").iterdir())
    result = runner.invoke(
        app, ["predict", str(out), str(one), str(root / "dog"), "--csv", str(csv_path)]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 + len(list((root / "dog").iterdir()))
    assert sum(r["label"] == "dog" for r in rows[1:]) >= 0.6 * (len(rows) - 1)  # chance is 1/3


def test_predict_prints_and_reports_unreadable(cli_run, tmp_path):
    _, out = cli_run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"")
    good = tmp_path / "good.png"
    import numpy as np
    from conftest import color_image
    color_image(0, 3, np.random.default_rng(0)).save(good)
    result = runner.invoke(app, ["predict", str(out), str(good), str(bad)])
    assert result.exit_code == 0
    assert (
        "good.png" in result.stdout and "skipped" in result.output and "zero-byte" in result.output
    )


def test_archs_lists_timm_names():
    result = runner.invoke(app, ["archs", "resnet1"])
    assert result.exit_code == 0 and "resnet18" in result.stdout.split()


def test_unknown_arch_is_a_clear_error(class_folders, tmp_path):
    result = runner.invoke(app, ["fit", str(class_folders), "--out", str(tmp_path / "r"),
                                 *TINY_ARGS[2:], "--arch", "resnet_18"])
    assert result.exit_code == 2
    assert "unknown architecture 'resnet_18'" in result.output and "resnet18" in result.output


def test_missing_source_is_a_clear_error():
    result = runner.invoke(app, ["fit", "no/such/folder", *TINY_ARGS])
    assert result.exit_code == 2 and "no/such/folder" in result.output


def test_version_from_console_script_and_module():
    script = subprocess.run(["easycls", "--version"], capture_output=True, text=True, check=True)
    module = subprocess.run(
        [sys.executable, "-m", "easycls", "--version"], capture_output=True, text=True, check=True
    )
    assert script.stdout.strip() == module.stdout.strip() == f"easycls {__version__}"


def test_predict_table_header_top_k_and_strict(cli_run, tmp_path):
    root, out = cli_run
    one = str(next((root / "cat").iterdir()))
    result = runner.invoke(app, ["predict", str(out), one])
    assert result.stdout.splitlines()[0].split("\t") == ["file", "label", "probability"]
    result = runner.invoke(app, ["predict", str(out), one, "--top-k", "2"])
    header, row = result.stdout.splitlines()
    assert header.split("\t") == ["file", "label_1", "probability_1", "label_2", "probability_2"]
    cells = row.split("\t")
    assert {cells[1], cells[3]} <= {"cat", "dog", "fox"} and float(cells[2]) >= float(cells[4])
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    assert runner.invoke(app, ["predict", str(out), one, str(bad)]).exit_code == 0
    result = runner.invoke(app, ["predict", str(out), one, str(bad), "--strict"])
    assert result.exit_code == 3 and "1 of 2 inputs could not be read" in result.output


def test_the_command_freezes_the_collector_at_exit_after_the_trackers(monkeypatch):
    import atexit
    import gc

    from easycls import cli

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn) or fn)
    monkeypatch.setattr(sys, "argv", ["easycls", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    # registered before the command runs, so a tracker's handler (registered later) runs first
    assert registered == [gc.freeze]
