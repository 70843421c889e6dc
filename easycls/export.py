"""Export a run: ONNX (with a torch-free `predict.py`), TorchScript or a torch.export
ExportedProgram, each checked against PyTorch before it is kept.

Every format holds the same graph (`exporters.Pipeline`): uint8 pixels (batch, size, size, 3),
as the validation preprocessing makes them (`load_resized`), in; normalization, the model and
softmax or sigmoid inside; probabilities out. Decoding and resizing stay outside (Pillow):
beside an ONNX `predict.py` go verbatim copies of `easycls/data/images.py`,
`easycls/decide.py` and `easycls/onnx_predictor.py` (numpy, Pillow and onnxruntime only).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from . import __version__
from . import decide as decide_module
from . import onnx_predictor as onnx_predictor_module
from .bundle import Predictor, load
from .data import images as image_module
from .data.images import load_resized, split_zip_ref
from .errors import UserError
from .exporters import (
    Pipeline,
    load_pt2,
    load_torchscript,
    onnx_graph,
    write_pt2,
    write_torchscript,
)
from .quantize import MIN_AGREEMENT, Quantized, QuantizeError, quantize_int8, training_refs
from .safeio import check_writable

__all__ = ["export", "ExportError", "ExportResult", "FORMATS", "check_images",
           "validation_refs"]

FORMATS = ("onnx", "torchscript", "pt2")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "pt2": "model.pt2"}
TOLERANCE = 1e-4
AGREEMENT_IMAGES = 1000            # validation images the int8 model is compared on, at most
GENERATED_AGREEMENT_IMAGES = 64    # generated ones, when the run's data is not at hand
_STATIC = Path(__file__).with_name("static")
_COPIED = {"easycls_images.py": image_module, "easycls_decide.py": decide_module,
           "easycls_onnx.py": onnx_predictor_module}
_PREPROCESSING_NOTE = (
    "input 'pixels': uint8 (batch, input_size, input_size, 3) RGB. Make it as easycls does "
    "(load_resized in easycls/data/images.py, copied as easycls_images.py beside an ONNX "
    "export): decode with Pillow (JPEG draft at input_size), "
    "apply the EXIF orientation, convert to RGB (16-bit scaled to 8, alpha composited on "
    "white), resize the centered square crop of side min(w, h) to input_size with Pillow "
    "BILINEAR. The graph normalizes ((x - 255 * mean) / (255 * std), NCHW) and applies "
    "softmax (single-label) or sigmoid (multi-label): output 'probabilities' (batch, classes).")


class ExportError(UserError, RuntimeError):
    """The model cannot be exported, or the exported model disagrees with PyTorch."""


@dataclass
class ExportResult:
    """What `export` wrote and how well it agrees with PyTorch."""

    model: Path              # model.onnx, model.pt or model.pt2
    script: Path | None      # predict.py (ONNX only)
    readme: Path             # README.md: how to load the model
    max_diff: float          # max |exported - PyTorch| probability over the checked images
    checked: int             # how many images were checked
    checked_on: str          # "validation" or "generated"
    format: str = "onnx"
    exporter: str = "dynamo"  # ONNX: "dynamo" or "legacy"; else "torchscript" / "torch.export"
    note: str | None = None  # why the legacy ONNX exporter was used
    quantized: Quantized | None = None  # model_int8.onnx and its agreement and speed


def export(run_dir: str | Path, out: str | Path | None = None, *, format: str = "onnx",
           model: nn.Module | None = None, max_check: int = 64,
           tolerance: float = TOLERANCE, quantize: str | None = None,
           min_agreement: float = MIN_AGREEMENT) -> ExportResult:
    """Write a run's model in `format`, with a README on loading it, checked against PyTorch.

    Args:
        run_dir: the run directory written by `fit`.
        out: where to write (default `RUN_DIR/<format>`).
        format: "onnx" (with a torch-free predict.py), "torchscript" or "pt2".
        model: an instance of the architecture, for runs of a custom `nn.Module`.
        max_check: how many validation images (or generated ones) to compare on.
        tolerance: the largest allowed |exported - PyTorch| probability difference.
        quantize: "int8" (ONNX only): also write `model_int8.onnx`, statically quantized on
            up to 300 of the run's training images (dynamically without the data), kept only
            if its top-1 agrees with the float model's on the validation images at least
            `min_agreement` of the time; its measured speed-up is in `result.quantized`.
        min_agreement: the least top-1 agreement of the int8 model (0 to 1).

    Raises:
        ExportError: the model cannot be exported, or it disagrees by more than `tolerance`
            (the written model is then removed).

    Example:
        >>> r = export("runs/digits-resnet18", format="pt2")
        >>> r.max_diff < 1e-4
        True
    """
    _check_arguments(format, quantize, min_agreement)
    if format == "onnx":
        _require("onnx", "onnxruntime", "onnxscript")
    out = Path(out) if out is not None else Path(run_dir) / format
    check_writable(out, "the exported model", "pass --out with a folder you can write to")
    predictor = load(run_dir, model=model, device="cpu")
    pipeline = Pipeline(predictor.model, predictor.meta).eval()
    path = out / MODEL_FILES[format]
    with tempfile.TemporaryDirectory() as tmp:
        refs, kind = check_images(run_dir, predictor.size, max_check, Path(tmp))
        try:
            result = _WRITERS[format](pipeline, predictor, run_dir, path)
            diff = float(np.abs(result.runner(refs) - predictor.probabilities(refs)).max())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if not diff <= tolerance:  # also catches NaN
            path.unlink(missing_ok=True)
            raise ExportError(f"the {format} model disagrees with PyTorch: max |difference| "
                              f"{diff:.3g} > {tolerance:g} on {len(refs)} {kind} images; "
                              f"{path.name} was removed")
        quantized = (_int8(path, run_dir, predictor.size, min_agreement, Path(tmp))
                     if quantize else None)
    readme = _write_readme(out, format, predictor.meta, result.exporter, quantized)
    return ExportResult(path, result.script, readme, diff, len(refs), kind, format,
                        result.exporter, result.note, quantized)


def _check_arguments(format: str, quantize: str | None, min_agreement: float) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}: the one there is is int8")
    if quantize and format != "onnx":
        raise ValueError(f"--quantize int8 is for ONNX models, not --format {format}")
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"min_agreement is a share between 0 and 1, not {min_agreement}")


def _int8(path: Path, run_dir: str | Path, size: int, min_agreement: float,
          tmp: Path) -> Quantized:
    """model_int8.onnx beside model.onnx, calibrated on the run's training images, compared
    on its validation images (generated ones, and dynamic quantization, without the data)."""
    compare = validation_refs(run_dir, AGREEMENT_IMAGES)
    kind = "validation" if compare else "generated"
    if not compare:
        (tmp / "agreement").mkdir()
        compare = _generated(tmp / "agreement", size, GENERATED_AGREEMENT_IMAGES)
    try:
        return quantize_int8(path, training_refs(run_dir), compare, kind, min_agreement)
    except QuantizeError as e:
        raise ExportError(str(e)) from None


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"export needs {' and '.join(missing)}: pip install 'easycls[export]'")


@dataclass
class _Written:
    runner: Callable[[list[str]], np.ndarray]  # image files -> probabilities, the format's way
    exporter: str
    script: Path | None = None
    note: str | None = None


# ---------------------------------------------------------------- the formats


def _write_onnx(pipeline: Pipeline, predictor: Predictor, run_dir: str | Path,
                path: Path) -> _Written:
    """model.onnx with its metadata, predict.py and the modules it imports, metrics.json."""
    import onnx
    meta = predictor.meta
    try:
        graph = onnx_graph(pipeline, meta["arch"], predictor.size)
    except RuntimeError as e:
        raise ExportError(str(e)) from e
    graph.proto.doc_string = f"easycls {meta['arch']} classifier; {_PREPROCESSING_NOTE}"
    for key, value in _metadata(meta).items():
        graph.proto.metadata_props.add(key=key, value=value)
    onnx.save(graph.proto, str(path))
    script = path.with_name("predict.py")
    script.write_text((_STATIC / "predict_onnx.py.in").read_text().replace("@VERSION@",
                                                                           __version__))
    for name, module in _COPIED.items():
        shutil.copyfile(module.__file__, path.with_name(name))
    metrics = Path(run_dir) / "metrics.json"
    if metrics.is_file():  # so the folder serves on its own (`easycls serve FOLDER`)
        shutil.copyfile(metrics, path.with_name("metrics.json"))
    module = _import_script(script)
    model = module.Model(path)
    return _Written(lambda refs: model.probabilities(refs, bs=len(refs)), graph.exporter,
                    script, graph.note)


def _write_torch(writer: Callable, loader: Callable, exporter: str) -> Callable:
    def write(pipeline: Pipeline, predictor: Predictor, run_dir: str | Path,
              path: Path) -> _Written:
        try:
            writer(pipeline, predictor.size, path, predictor.meta)
        except Exception as e:  # noqa: BLE001 - tracing and torch.export raise many types
            raise ExportError(f"{predictor.meta['arch']} cannot be exported as {exporter}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
                              ) from e
        run = loader(path)
        return _Written(lambda refs: run(_pixels(refs, predictor.size)), exporter)
    return write


_WRITERS = {"onnx": _write_onnx,
            "torchscript": _write_torch(write_torchscript, load_torchscript, "torchscript"),
            "pt2": _write_torch(write_pt2, load_pt2, "torch.export")}


def _pixels(refs: list[str], size: int) -> np.ndarray:
    return np.stack([load_resized(r, size) for r in refs])


def _metadata(meta: dict) -> dict[str, str]:
    """ONNX metadata_props: model.json key by key (JSON-encoded), plus the preprocessing."""
    props = {k: json.dumps(v) for k, v in meta.items()}
    props.setdefault("easycls_version", json.dumps(__version__))
    props["preprocessing"] = _PREPROCESSING_NOTE
    return props


def _write_readme(out: Path, format: str, meta: dict, exporter: str,
                  quantized: Quantized | None = None) -> Path:
    how = {"dynamo": "the torch.export-based exporter", "legacy": "the legacy TorchScript-based "
           "exporter"}.get(exporter, exporter)
    text = (_STATIC / f"README_{format}.md.in").read_text()
    for key, value in {"@ARCH@": meta["arch"], "@VERSION@": __version__, "@EXPORTER@": how,
                       "@SIZE@": str(meta["input_size"]), "@N@": str(len(meta["classes"])),
                       "@INT8@": _int8_words(quantized),
                       "@PREPROCESSING@": "Preprocessing: " + _PREPROCESSING_NOTE[
                           _PREPROCESSING_NOTE.index("Make it"):]}.items():
        text = text.replace(key, value)
    (out / "README.md").write_text(text)
    return out / "README.md"


def _int8_words(q: Quantized | None) -> str:
    if q is None:
        return ""
    how = (f"statically quantized, calibrated on {q.calibrated_on} training images"
           if q.method == "static" else "dynamically quantized (int8 weights)")
    return (f"\n`model_int8.onnx` is the same model {how}; its top-1 agrees with\n"
            f"`model.onnx` on {q.agreement:.2%} of {q.compared_on} {q.compared_kind} images, "
            f"and it ran\n{q.speedup:.2f}x as fast on the exporting machine. Use it with "
            "`--model model_int8.onnx`.\n")


# ---------------------------------------------------------------- checking


def check_images(run_dir: str | Path, size: int, limit: int, folder: Path
                 ) -> tuple[list[str], str]:
    """Up to `limit` validation images of the run, or generated ones written into `folder`
    when the run's data is not at hand; and which of the two ("validation", "generated")."""
    refs = validation_refs(run_dir, limit)
    return (refs, "validation") if refs else (_generated(folder, size, limit), "generated")


def _import_script(path: Path):
    """predict.py as a module, with its own copied modules (not cached ones)."""
    copies = [name.removesuffix(".py") for name in _COPIED]
    for name in copies:
        sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location("easycls_exported_predict", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        for name in copies:
            sys.modules.pop(name, None)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path.resolve().parent))
    return module


def validation_refs(run_dir: str | Path, limit: int) -> list[str]:
    """Up to `limit` readable validation image files of the run, spread over the split."""
    from .data.images import check_images as unreadable
    try:
        from .data.prepare import run_items
        _, refs, _ = run_items(run_dir)
    except Exception:  # noqa: BLE001 - data moved, renamed or gone: generated images will do
        return []
    refs = [r for r in refs if split_zip_ref(r) is None]  # predict.py reads files, not zips
    refs = refs[::max(1, len(refs) // limit)][:limit]
    bad = unreadable(refs)
    return [r for i, r in enumerate(refs) if i not in bad]


def _generated(folder: Path, size: int, n: int) -> list[str]:
    """`n` noise images of varied shapes (so resizing and cropping are exercised)."""
    rng = np.random.default_rng(0)
    refs = []
    for i in range(n):
        w, h = (size + rng.integers(0, size + 1) for _ in range(2))
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        refs.append(str(path))
    return refs
