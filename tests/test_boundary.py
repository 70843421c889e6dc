"""One error boundary for every command: the user's errors are one line and a non-zero exit,
never a traceback; `--debug` (or EASYCLS_DEBUG=1) shows it; a bug keeps its traceback.

The table holds the traceback cases of the reliability issue (round 3), typed as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import write_class_folders
from typer.testing import CliRunner

from easycls import errors
from easycls.bundle import save_bundle
from easycls.cli import app

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES))
    return save_bundle(model, tmp_path_factory.mktemp("b") / "run", arch="test_resnet",
                       classes=CLASSES, size=32, mean=[0.5] * 3, std=[0.25] * 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("d") / "pets", per_class=3)


@pytest.fixture
def read_only():
    """make(path): `path` (created) made read-only: a read-only bind mount as root (root
    ignores modes), else chmod; undone at the end."""
    undo = []

    def make(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            if subprocess.run(["mount", "-o", "bind,ro", str(path), str(path)],
                              capture_output=True).returncode != 0:
                pytest.skip("cannot bind-mount read-only here")
            undo.append(lambda: subprocess.run(["umount", str(path)], check=False))
        else:
            os.chmod(path, 0o555)
            undo.append(lambda: os.chmod(path, 0o755))
        return path

    yield make
    for u in reversed(undo):
        u()


def _copy(bundle: Path, to: Path, **meta) -> Path:
    shutil.copytree(bundle, to)
    if meta:
        doc = json.loads((to / "model.json").read_text())
        (to / "model.json").write_text(json.dumps({**doc, **meta}))
    return to


def _fit(data, *more):
    return ["fit", str(data), "--arch", "test_resnet", "--no-pretrained", "--epochs", "1",
            "--size", "32", "--quiet", *more]


def _csv_source(tmp: Path, data: Path) -> Path:
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (tmp / "labels.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    return tmp / "labels.csv"


# case -> (tmp, bundle, data, read_only, env) -> argv; `says` must be in the one line.
CASES = {
    "--out under a read-only folder": (
        lambda t, b, d, ro, env: _fit(d, "--out", str(ro(t / "ro") / "run")), "read-only"),
    "--out itself read-only": (
        lambda t, b, d, ro, env: _fit(d, "--out", str(ro(t / "out"))), "read-only"),
    "EASYCLS_CACHE read-only, --store auto": (
        lambda t, b, d, ro, env: (env.update(EASYCLS_CACHE=str(ro(t / "cache"))),
                                  _fit(d, "--out", str(t / "run")))[1], "EASYCLS_CACHE"),
    "EASYCLS_CACHE read-only, --store cache": (
        lambda t, b, d, ro, env: (env.update(EASYCLS_CACHE=str(ro(t / "cache"))),
                                  _fit(d, "--out", str(t / "run"), "--store", "cache"))[1],
        "--store none"),
    "evaluate of a read-only run": (
        lambda t, b, d, ro, env: ["evaluate", str(ro(_copy(b, t / "run"))), str(d)],
        "evaluation report"),
    "export of a read-only run": (
        lambda t, b, d, ro, env: ["export", str(ro(_copy(b, t / "run")))], "exported model"),
    "fit --overwrite of a read-only run": (
        lambda t, b, d, ro, env: _fit(d, "--out", str(ro(_copy(b, t / "run"))), "--overwrite"),
        "read-only"),
    "predict --csv into a read-only folder": (
        lambda t, b, d, ro, env: ["predict", str(b), str(d), "--csv",
                                  str(ro(t / "o") / "p.csv")], "--csv"),
    "--out whose parent is a file": (
        lambda t, b, d, ro, env: ((t / "f").write_text("x"),
                                  _fit(d, "--out", str(t / "f" / "run")))[1], "not a folder"),
    "--out that is a file": (
        lambda t, b, d, ro, env: ((t / "f").write_text("x"), _fit(d, "--out", str(t / "f")))[1],
        "is a file"),
    "predict --csv into a folder that does not exist": (
        lambda t, b, d, ro, env: ["predict", str(b), str(d), "--csv",
                                  str(t / "nowhere" / "p.csv")], "does not exist"),
    "an empty CSV label delimiter": (
        lambda t, b, d, ro, env: ["fit", str(_csv_source(t, d)), "--images", str(d),
                                  "--label-delimiter", "", "--out", str(t / "run")],
        "label_delimiter=''"),
    "model.json nested 100,000 deep": (
        lambda t, b, d, ro, env: ((_copy(b, t / "run") / "model.json").write_text(
            "[" * 100_000 + "]" * 100_000), ["predict", str(t / "run"), str(d)])[1],
        "levels deep, over the 32"),
    "model.json with 1M classes and resnet50": (
        lambda t, b, d, ro, env: ["predict", str(_copy(b, t / "run", arch="resnet50", classes=[
            f"c{i}" for i in range(1_000_000)])), str(d)], "1 to 100,000"),
    "model.json with input_size 4096": (
        lambda t, b, d, ro, env: ["predict", str(_copy(b, t / "run", input_size=4096)), str(d)],
        "from 8 to 2048"),
    "serve on a bundle with std 0": (
        lambda t, b, d, ro, env: ["serve", str(_copy(b, t / "run", std=[0, 1, 1]))], "'std'"),
    "check with --out under a read-only folder": (
        lambda t, b, d, ro, env: ["check", str(d), "--out", str(ro(t / "ro") / "report"),
                                  "--quiet"], "read-only"),
    "compare of folders that are not runs": (
        lambda t, b, d, ro, env: ["compare", str(t), str(t / "nowhere")], "nothing to compare"),
    "serve on a folder without model.json": (
        lambda t, b, d, ro, env: ["serve", str(t)], "holds no model.json"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_users_error_is_one_line_without_a_traceback(case, tmp_path, bundle, data,
                                                          read_only, monkeypatch):
    argv_of, says = CASES[case]
    env: dict[str, str] = {}
    argv = argv_of(tmp_path, bundle, data, read_only, env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    result = CliRunner().invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert isinstance(result.exception, SystemExit), (case, result.exception, result.output)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.output)
    assert says in lines[0], (case, lines[0])


def test_debug_shows_the_traceback_and_a_bug_keeps_it(tmp_path, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    for argv in (["--debug", "serve", str(tmp_path)], ["serve", str(tmp_path)]):
        if argv[0] != "--debug":
            monkeypatch.setenv(errors.DEBUG_ENV, "1")
        result = CliRunner().invoke(app, argv)
        assert isinstance(result.exception, FileNotFoundError), result.output
    monkeypatch.delenv(errors.DEBUG_ENV)
    import easycls.data.cachedir as cachedir
    monkeypatch.setattr(cachedir, "entries", lambda: {}["a bug"])
    result = CliRunner().invoke(app, ["cache", "list"])
    assert isinstance(result.exception, KeyError)  # a bug: not turned into one line


@pytest.mark.slow
def test_a_real_command_prints_no_traceback(tmp_path, data):
    """The whole path, in a real process: stderr holds one line; EASYCLS_DEBUG=1 adds the
    traceback."""
    run = _copy_tree_nested(tmp_path)
    cmd = [sys.executable, "-m", "easycls", "predict", str(run), str(data)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "levels deep" in done.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                           env={**os.environ, errors.DEBUG_ENV: "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def _copy_tree_nested(tmp: Path) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "model.json").write_text("{\"a\": " * 50_000 + "1" + "}" * 50_000)
    return run


@pytest.mark.parametrize("explained, line", [
    (PermissionError(13, "Permission denied", "/x/run"), "/x/run: permission denied; choose"),
    (NotADirectoryError(20, "Not a directory", "/x/f/run"), "/x/f/run: a part of this path"),
    (OSError(30, "Read-only file system", "/x"), "/x: read-only file system"),
    (FileNotFoundError("weights file w.pt does not exist"), "weights file w.pt does not exist"),
    (ImportError("export needs onnx: pip install 'easycls[export]'"), "pip install"),
])
def test_explain_maps_environment_errors_to_one_line(explained, line):
    said, code = errors.explain(explained)
    assert line in said and "\n" not in said and code == 2


@pytest.mark.parametrize("bug", [KeyError("x"), ValueError("bad"), OSError("no errno"),
                                 RecursionError(), TypeError("t")])
def test_explain_leaves_bugs_alone(bug):
    assert errors.explain(bug) is None


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from easycls.export import export
    return export(bundle, tmp_path_factory.mktemp("onnx"), max_check=2).script


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (["--bs", "0"], "--bs must be at least 1, not 0"),
    (["--model", "nowhere/model.onnx"], "nowhere/model.onnx does not exist"),
    (["--model", "NOT-ONNX"], "is not a model `easycls export` wrote"),
])
def test_exported_predict_py_fails_in_one_line(exported, data, args, says):
    if "NOT-ONNX" in args:
        args = ["--model", str(exported)]  # a file, but not an ONNX model
    done = subprocess.run([sys.executable, str(exported), str(data), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and says in done.stderr, done.stderr
