"""Export a run to ONNX, with a torch-free `predict.py` beside it, and check the result.

The graph takes what the validation preprocessing produces, uint8 pixels (batch, size, size, 3)
from `load_resized`, and does the rest inside: normalization, the model, softmax or sigmoid.
Decoding and resizing stay outside (Pillow): beside `predict.py` goes a verbatim copy of
`easycls/data/images.py` (it needs only numpy and Pillow), so both read images the same way.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import __version__
from .bundle import Predictor, load
from .data import images as image_module
from .data.images import split_zip_ref

__all__ = ["export", "ExportError", "ExportResult", "FORMATS"]

FORMATS = ("onnx",)
OPSET = 17
TOLERANCE = 1e-4
_TEMPLATE = Path(__file__).with_name("static") / "predict_onnx.py.in"
_PREPROCESSING_NOTE = (
    "input 'pixels': uint8 (batch, input_size, input_size, 3) RGB. Make it as easycls does "
    "(load_resized in easycls_images.py): decode with Pillow (JPEG draft at input_size), "
    "apply the EXIF orientation, convert to RGB (16-bit scaled to 8, alpha composited on "
    "white), resize the centered square crop of side min(w, h) to input_size with Pillow "
    "BILINEAR. The graph normalizes ((x - 255 * mean) / (255 * std), NCHW) and applies "
    "softmax (single-label) or sigmoid (multi-label): output 'probabilities' (batch, classes).")


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported model disagrees with PyTorch."""


@dataclass
class ExportResult:
    """What `export` wrote and how well it agrees with PyTorch."""

    model: Path              # model.onnx
    script: Path             # predict.py (easycls_images.py beside it)
    max_diff: float          # max |ONNX - PyTorch| probability over the checked images
    checked: int             # how many images were checked
    checked_on: str          # "validation" or "generated"


class _Pipeline(nn.Module):
    """uint8 NHWC pixels -> probabilities, the same arithmetic as `Predictor.probabilities`."""

    def __init__(self, model: nn.Module, meta: dict):
        super().__init__()
        self.model, self.multi_label = model, bool(meta.get("multi_label"))
        self.register_buffer("mean", torch.tensor(meta["mean"]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(meta["std"]).view(1, 3, 1, 1) * 255)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        logits = self.model(x).float()
        return logits.sigmoid() if self.multi_label else logits.softmax(1)


def export(run_dir: str | Path, out: str | Path | None = None, *, format: str = "onnx",
           model: nn.Module | None = None, max_check: int = 64,
           tolerance: float = TOLERANCE) -> ExportResult:
    """Write `model.onnx` and a torch-free `predict.py` for a run, and check them against PyTorch.

    Args:
        run_dir: the run directory written by `fit`.
        out: where to write (default `RUN_DIR/onnx`).
        format: only "onnx".
        model: an instance of the architecture, for runs of a custom `nn.Module`.
        max_check: how many validation images (or generated ones) to compare on.
        tolerance: the largest allowed |ONNX - PyTorch| probability difference.

    Raises:
        ExportError: an operator ONNX lacks, or a difference above `tolerance`.

    Example:
        >>> r = export("runs/digits-resnet18")
        >>> r.max_diff < 1e-4
        True
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    _require_onnx()
    predictor = load(run_dir, model=model, device="cpu")
    out = Path(out) if out is not None else Path(run_dir) / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, script = out / "model.onnx", out / "predict.py"
    _write_onnx(predictor, onnx_path)
    script.write_text(_TEMPLATE.read_text().replace("@VERSION@", __version__))
    shutil.copyfile(image_module.__file__, out / "easycls_images.py")
    try:
        diff, n, kind = _check(predictor, run_dir, script, onnx_path, max_check)
    except BaseException:
        onnx_path.unlink(missing_ok=True)
        raise
    if not diff <= tolerance:  # also catches NaN
        onnx_path.unlink(missing_ok=True)
        raise ExportError(f"the ONNX model disagrees with PyTorch: max |difference| {diff:.3g} > "
                          f"{tolerance:g} on {n} {kind} images; model.onnx was removed")
    return ExportResult(onnx_path, script, diff, n, kind)


def _require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"export needs {' and '.join(missing)}: pip install 'easycls[export]'")


# ---------------------------------------------------------------- writing


def _write_onnx(predictor: Predictor, path: Path) -> None:
    """Trace the pipeline with a dynamic batch axis, then attach the metadata."""
    import onnx
    meta = predictor.meta
    pipeline = _Pipeline(predictor.model, meta).eval()
    dummy = torch.zeros(2, predictor.size, predictor.size, 3, dtype=torch.uint8)
    buf = io.BytesIO()
    try:
        # The TorchScript exporter (dynamo=False) works offline with onnx alone; the dynamo one
        # needs onnxscript. Its graph dump on failure goes to stderr, our message says it better.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(pipeline, (dummy,), buf, dynamo=False, opset_version=OPSET,
                              input_names=["pixels"], output_names=["probabilities"],
                              dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}})
    except Exception as e:  # the exporter's errors have no common base class
        raise ExportError(_unsupported(meta["arch"], e)) from e
    proto = onnx.load_from_string(buf.getvalue())
    proto.doc_string = f"easycls {meta['arch']} classifier; {_PREPROCESSING_NOTE}"
    for key, value in _metadata(meta).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def _unsupported(arch: str, e: Exception) -> str:
    found = re.search(r"operator '([\w:.]+)'", str(e))
    if found:
        return (f"{arch} cannot be exported to ONNX: operator {found.group(1)} is not supported "
                f"(opset {OPSET}). Replace it in the model, or serve the run with `easycls serve`.")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{arch} cannot be exported to ONNX: {first}"


def _metadata(meta: dict) -> dict[str, str]:
    """ONNX metadata_props: JSON-encoded values, plus the preprocessing stated in words."""
    keys = ("arch", "classes", "multi_label", "thresholds", "input_size", "mean", "std")
    props = {k: json.dumps(meta.get(k)) for k in keys}
    props["easycls_version"] = json.dumps(__version__)
    props["preprocessing"] = _PREPROCESSING_NOTE
    return props


# ---------------------------------------------------------------- checking


def _check(predictor: Predictor, run_dir: str | Path, script: Path, onnx_path: Path,
           limit: int) -> tuple[float, int, str]:
    """Max |ONNX - PyTorch| over up to `limit` images, each side with its own preprocessing."""
    module = _import_script(script)
    refs = _validation_refs(run_dir, limit)
    with tempfile.TemporaryDirectory() as tmp:
        kind = "validation" if refs else "generated"
        refs = refs or _generated(Path(tmp), predictor.size, limit)
        onnx_model = module.Model(onnx_path)
        pixels = np.stack([module.load_resized(r, onnx_model.size) for r in refs])
        ours = onnx_model.probabilities(pixels, bs=len(refs))  # another batch size than traced
        theirs = predictor.probabilities(refs)
    return float(np.abs(ours - theirs).max()), len(refs), kind


def _import_script(path: Path):
    """predict.py as a module, with its own easycls_images (not a cached one)."""
    sys.modules.pop("easycls_images", None)
    spec = importlib.util.spec_from_file_location("easycls_exported_predict", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("easycls_images", None)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path.resolve().parent))
    return module


def _validation_refs(run_dir: str | Path, limit: int) -> list[str]:
    """Up to `limit` readable validation image files of the run, spread over the split."""
    from .data.images import check_images
    try:
        from .data.prepare import run_items
        _, refs, _ = run_items(run_dir)
    except Exception:  # noqa: BLE001 - data moved, renamed or gone: generated images will do
        return []
    refs = [r for r in refs if split_zip_ref(r) is None]  # predict.py reads files, not zips
    refs = refs[::max(1, len(refs) // limit)][:limit]
    bad = check_images(refs)
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
