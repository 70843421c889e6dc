"""ONNX export: the graph and its metadata, the torch-free predict.py, the self-check, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import TINY, write_class_folders
from PIL import Image
from typer.testing import CliRunner

import easycls
import easycls.data.images
from easycls.bundle import load, save_bundle
from easycls.cli import app
from easycls.export import ExportError, export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# Runs a script with torch (and everything built on it) made impossible to import.
TORCH_FREE = ("import sys, runpy\n"
              "for m in ('torch', 'torchvision', 'fastai', 'timm', 'easycls'):\n"
              "    sys.modules[m] = None\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def torch_free(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", TORCH_FREE, str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def make_bundle(out: Path, classes, multi_label=False, thresholds=None, model=None) -> Path:
    """A run directory holding only a bundle: an untrained model is enough to compare runtimes."""
    torch.manual_seed(0)
    model = model or timm.create_model("test_resnet", pretrained=False, num_classes=len(classes))
    arch = "test_resnet" if not isinstance(model, Tiny) else "custom:Tiny"
    return save_bundle(model, out, arch=arch, classes=classes, size=32, mean=MEAN, std=STD,
                       multi_label=multi_label, thresholds=thresholds)


def held_out(folder: Path, n: int = 50) -> Path:
    """`n` noise images of varied shapes and formats (PNG, JPEG, grey, RGBA)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = rng.integers(20, 90, 2)
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = [img, img.convert("L"), img.convert("RGBA")][i % 3]
        if i % 2:
            img.save(folder / f"{i:02d}.png")
        else:
            img.convert("RGB").save(folder / f"{i:02d}.jpg")
    return folder


class Tiny(torch.nn.Module):
    """A custom architecture as `fit(arch=module)` accepts."""

    def __init__(self, n: int = 3, op=None):
        super().__init__()
        self.conv, self.head, self.op = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, n), op

    def forward(self, x):
        x = self.conv(x)
        if self.op is not None:
            x = self.op(x)
        return self.head(x.relu().mean((2, 3)))


def cli_predictions(run: Path, folder: Path) -> dict[str, list[str]]:
    result = CliRunner().invoke(app, ["predict", str(run), str(folder)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t")[0] == "file"  # the table's header
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines[1:]}


def onnx_predictions(script: Path, folder: Path, *args: str) -> tuple[dict, dict]:
    """predict.py's text lines {file: [label(s), probabilities]} and JSON {file: probabilities}."""
    text, as_json = torch_free(script, folder, *args), torch_free(script, folder, "--json", *args)
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    lines = {ln.split("\t")[0]: ln.split("\t")[1:] for ln in text.stdout.splitlines()}
    probs = {r["file"]: r["probabilities"] for r in map(json.loads, as_json.stdout.splitlines())}
    return lines, probs


def assert_same_as_easycls(run: Path, script: Path, folder: Path, n: int) -> float:
    """Same labels as `easycls predict`, probabilities within 1e-4 of PyTorch's; returns the max."""
    ours, probs = onnx_predictions(script, folder)
    theirs = cli_predictions(run, folder)
    assert len(ours) == len(theirs) == n
    assert {f: v[0] for f, v in ours.items()} == {f: v[0] for f, v in theirs.items()}
    predictor = load(run, device="cpu")
    files = sorted(probs)
    expected = predictor.probabilities(files)
    got = np.array([[probs[f][c] for c in predictor.classes] for f in files])
    diff = float(np.abs(got - expected).max())
    assert diff < 1e-4
    return diff


# ---------------------------------------------------------------- fast: bundles, no training


LEGACY_WARNING = "legacy TorchScript-based ONNX export"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = make_bundle(tmp_path_factory.mktemp("runs") / "single", ["cat", "dog", "fox", "owl"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = export(run, max_check=8)
    assert not [w for w in seen if LEGACY_WARNING in str(w.message)]
    return run, result


def test_export_writes_model_and_metadata(single):
    run, result = single
    assert result.model == run / "onnx" / "model.onnx" and result.script.name == "predict.py"
    copied = result.script.with_name("easycls_images.py").read_text()
    assert copied == Path(easycls.data.images.__file__).read_text()  # the same image reading
    assert result.checked == 8 and result.checked_on == "generated" and result.max_diff < 1e-4
    proto = onnx.load(str(result.model))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == ["cat", "dog", "fox", "owl"]
    assert json.loads(props["multi_label"]) is False and json.loads(props["input_size"]) == 32
    assert json.loads(props["mean"]) == MEAN and json.loads(props["std"]) == STD
    assert json.loads(props["easycls_version"]) == easycls.__version__
    assert "BILINEAR" in props["preprocessing"] and "thresholds" in props
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic batch axis
    # the supported, torch.export-based exporter made it (no fallback, no legacy warning)
    assert result.exporter == "dynamo" and result.note is None
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    readme = result.readme.read_text()
    assert result.readme == run / "onnx" / "README.md" and "OnnxPredictor" in readme


def test_onnx_runs_any_batch_size_like_torch(single):
    run, result = single
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    predictor = load(run, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    for n in (1, 5):
        got = session.run(["probabilities"], {"pixels": pixels[:n]})[0]
        want = predictor.probabilities([Image.fromarray(p) for p in pixels[:n]])
        assert got.shape == (n, 4) and np.abs(got - want).max() < 1e-4
        assert np.allclose(got.sum(1), 1, atol=1e-5)  # softmax in the graph


def test_torch_is_really_blocked(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\n")
    result = torch_free(probe)
    assert result.returncode != 0 and "import of torch halted" in result.stderr


def test_predict_script_matches_easycls_predict_without_torch(single, tmp_path):
    run, result = single
    assert_same_as_easycls(run, result.script, held_out(tmp_path / "imgs"), 50)


@pytest.mark.slow
def test_multi_label_thresholds_and_predict_script(tmp_path):
    th = {"global": 0.5, "per_class": [0.3, 0.5, 0.7], "at_least_one": False}
    run = make_bundle(tmp_path / "ml", ["a", "b", "c"], multi_label=True, thresholds=th)
    result = export(run, tmp_path / "out", max_check=8)
    props = {p.key: p.value for p in onnx.load(str(result.model)).metadata_props}
    assert json.loads(props["multi_label"]) is True and json.loads(props["thresholds"]) == th
    assert_same_as_easycls(run, result.script, held_out(tmp_path / "imgs"), 50)


def test_custom_module_exports(tmp_path):
    run = make_bundle(tmp_path / "custom", ["x", "y", "z"], model=Tiny())
    with pytest.raises(ValueError, match="custom model"):
        export(run)
    result = export(run, model=Tiny(), max_check=4)
    assert result.max_diff < 1e-4


def test_unsupported_operator_is_named(tmp_path):
    op = lambda x: torch.cummax(x, 2).values  # noqa: E731 - no ONNX symbolic for cummax
    run = make_bundle(tmp_path / "custom", ["x", "y", "z"], model=Tiny(op=op))
    with pytest.raises(ExportError, match=r"operator aten::cummax is not supported"):
        export(run, model=Tiny(op=op))


def _branch(x):
    if x.abs().sum() >= 0:  # data-dependent control flow: torch.export cannot capture it
        return x * 2
    return x


def test_a_model_torch_export_cannot_capture_falls_back_to_the_legacy_exporter(tmp_path):
    run = make_bundle(tmp_path / "custom", ["x", "y", "z"], model=Tiny(op=_branch))
    result = export(run, model=Tiny(op=_branch), max_check=4)
    assert result.exporter == "legacy" and result.max_diff < 1e-4
    assert result.note.startswith("custom:Tiny: the torch.export-based ONNX exporter failed (")
    assert "data-dependent" in result.note and "legacy" in result.note
    assert "\n" not in result.note and len(result.note) < 300
    assert "legacy TorchScript-based exporter" in result.readme.read_text()
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"


def test_disagreement_fails_and_removes_the_model(single, tmp_path):
    run, _ = single
    with pytest.raises(ExportError, match=r"disagrees with PyTorch: max \|difference\|"):
        export(run, tmp_path / "strict", max_check=4, tolerance=0.0)
    assert not (tmp_path / "strict" / "model.onnx").exists()


def test_cli_export_custom_arch_is_a_clear_error(tmp_path):
    run = make_bundle(tmp_path / "custom", ["x", "y", "z"], model=Tiny())
    result = CliRunner().invoke(app, ["export", str(run)])
    assert result.exit_code == 2 and "custom model (custom:Tiny)" in result.output


# Loads both torch formats as their READMEs say, with torch alone, in a fresh process.
LOAD_TORCH_FORMATS = """
import json, sys
import numpy as np, torch
pixels = torch.from_numpy(np.load(sys.argv[1]))
ts_files, pt2_files = {"model.json": ""}, {"model.json": ""}
scripted = torch.jit.load(sys.argv[2], _extra_files=ts_files).eval()
program = torch.export.load(sys.argv[3], extra_files=pt2_files)
with torch.inference_mode():
    np.save(sys.argv[4], np.stack([scripted(pixels).numpy(), program.module()(pixels).numpy()]))
print(json.dumps({"classes": [json.loads(f["model.json"])["classes"]
                              for f in (ts_files, pt2_files)],
                  "easycls_loaded": "easycls" in sys.modules}))
"""


@pytest.fixture(scope="module")
def torch_formats(tmp_path_factory):
    run = make_bundle(tmp_path_factory.mktemp("runs") / "fmt", ["ant", "bee", "cat"])
    scripted = export(run, format="torchscript", max_check=4)
    out = tmp_path_factory.mktemp("out")
    cli = CliRunner().invoke(app, ["export", str(run), "--format", "pt2", "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    return run, scripted, out / "model.pt2", cli.stdout


def test_torchscript_and_pt2_are_written_and_checked(torch_formats):
    run, scripted, pt2, printed = torch_formats
    assert scripted.model == run / "torchscript" / "model.pt" and scripted.max_diff < 1e-4
    assert scripted.exporter == "torchscript" and scripted.script is None
    assert "max |ExportedProgram - PyTorch| = " in printed and "on 64 generated images" in printed
    assert pt2.is_file() and f"wrote {pt2}, {pt2.with_name('README.md')};" in printed
    assert "torch.export.load" in pt2.with_name("README.md").read_text()
    assert "torch.jit.load" in scripted.readme.read_text()


@pytest.mark.slow
def test_torchscript_and_pt2_load_in_a_fresh_process_and_agree(torch_formats, tmp_path):
    run, scripted, pt2, _ = torch_formats
    pixels = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "px.npy", pixels)
    done = subprocess.run([sys.executable, "-c", LOAD_TORCH_FORMATS, tmp_path / "px.npy",
                           scripted.model, pt2, tmp_path / "out.npy"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.splitlines()[-1])
    assert facts == {"classes": [["ant", "bee", "cat"]] * 2, "easycls_loaded": False}
    want = load(run, device="cpu").probabilities(list(pixels))  # batch 5: not the traced 2
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (2, 5, 3) and np.abs(got - want).max() < 1e-4


def test_unknown_format(single):
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export(single[0], format="tflite")


# ---------------------------------------------------------------- slow: trained runs


@pytest.mark.slow
def test_digits_run_round_trip(digits_folder, digits_run, tmp_path):
    """Export checks itself on the run's validation images; 50 held-out digits agree."""
    result = export(digits_run, tmp_path / "onnx")
    assert result.checked == 64 and result.checked_on == "validation" and result.max_diff < 1e-4
    valid = sorted((digits_folder / "valid").rglob("*.png"))[::7][:50]
    folder = tmp_path / "held_out"
    folder.mkdir()
    for p in valid:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    assert_same_as_easycls(digits_run, result.script, folder, 50)


@pytest.mark.slow
def test_multi_label_run_round_trip(tmp_path):
    """A trained multi-label run (tuned thresholds) gives the same label sets without torch."""
    root = write_class_folders(tmp_path / "data", per_class=12)
    rng = np.random.default_rng(0)
    lines = ["file,labels"]
    for i, f in enumerate(sorted(root.rglob("*.png"))):
        extra = ["cat", "dog", "fox"][rng.integers(3)] if i % 2 else ""
        lines.append(f"{f.relative_to(root)},{' '.join(sorted({f.parent.name, extra} - {''}))}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    easycls.fit(str(tmp_path / "labels.csv"), images=str(root), out=str(out), **TINY)
    assert json.loads((out / "model.json").read_text())["multi_label"] is True
    result = export(out, tmp_path / "onnx")
    assert result.max_diff < 1e-4
    assert_same_as_easycls(out, result.script, held_out(tmp_path / "imgs"), 50)



# ---------------------------------------------------------------- int8


def _graph_ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_without_the_data_is_dynamic_and_reported(single, tmp_path):
    run, _ = single
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path), "--quantize",
                                      "int8", "--min-agreement", "0"])
    assert result.exit_code == 0, result.output
    q8 = tmp_path / "model_int8.onnx"
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(f"wrote {q8} "))
    assert "(dynamic: the run's training images are not at hand)" in line
    assert "on 64 generated images" in line and "images/s on this machine" in line
    assert "DynamicQuantizeLinear" in _graph_ops(q8) and "QuantizeLinear" not in _graph_ops(q8)
    session = ort.InferenceSession(str(q8), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props["classes"]) == ["cat", "dog", "fox", "owl"]  # metadata kept
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    got = session.run(["probabilities"], {"pixels": pixels})[0]
    want = load(run, device="cpu").probabilities(list(pixels))
    assert got.shape == (3, 4) and np.abs(got - want).max() < 0.05
    assert "model_int8.onnx" in (tmp_path / "README.md").read_text()


def test_int8_arguments_are_checked(single):
    with pytest.raises(ValueError, match="--quantize int8 is for ONNX models, not --format pt2"):
        export(single[0], format="pt2", quantize="int8")
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        export(single[0], quantize="int4")


class Tie(torch.nn.Module):
    """Classes 0 and 1 differ by a bias of 1e-6 only: float picks 1, int8 (whose bias
    cannot hold 1e-6) sees a tie and picks 0. Every image disagrees."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 3)
        with torch.no_grad():
            self.head.weight[1] = self.head.weight[0]
            self.head.weight[2] = 0
            self.head.bias.copy_(torch.tensor([0.0, 1e-6, -10.0]))

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


def test_int8_below_the_agreement_asked_for_is_refused(tmp_path):
    from easycls.quantize import QuantizeError, quantize_int8
    torch.manual_seed(0)
    run = make_bundle(tmp_path / "tie", ["a", "b", "c"], model=Tie())
    result = export(run, model=Tie(), max_check=4)
    images = [str(p) for p in sorted(held_out(tmp_path / "imgs", 12).iterdir())]
    with pytest.raises(QuantizeError, match=r"agrees with the float one on 0\.00% of 6 "
                                            r"generated images, below the 99\.00%"):
        quantize_int8(result.model, images[:6], images[6:], "generated", 0.99)
    assert not result.model.with_name("model_int8.onnx").exists()
    kept = quantize_int8(result.model, images[:6], images[6:], "generated", 0.0)
    assert kept.method == "static" and kept.calibrated_on == 6 and kept.agreement == 0.0
    assert "QuantizeLinear" in _graph_ops(kept.path)


def test_throughput_alternates_and_keeps_each_best_round():
    from easycls.quantize import throughput
    ticks, calls = iter(range(100)), []
    clock = lambda: float(next(ticks))  # noqa: E731 - a fake clock: one second per reading
    runs = {"float": lambda b: calls.append(("float", len(b))),
            "int8": lambda b: calls.append(("int8", len(b)))}
    speed = throughput(runs, np.zeros((40, 2, 2, 3), np.uint8), rounds=2, clock=clock)
    assert [c[0] for c in calls] == ["float"] * 2 + ["int8"] * 2 + ["float"] * 2 + ["int8"] * 2
    assert [c[1] for c in calls[:2]] == [32, 8] and speed == {"float": 40.0, "int8": 40.0}


@pytest.mark.slow
def test_int8_of_a_trained_digits_run_is_static_and_agrees(digits_run, tmp_path):
    result = export(digits_run, tmp_path / "onnx", quantize="int8")
    q = result.quantized
    assert q.method == "static" and q.calibrated_on == 300 and q.compared_kind == "validation"
    assert q.agreement >= 0.99 and q.compared_on > 300
    assert q.float_images_per_s > 0 and q.int8_images_per_s > 0
    assert "QuantizeLinear" in _graph_ops(q.path)
