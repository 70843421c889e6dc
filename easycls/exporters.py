"""One function per export format: the run's model as ONNX, TorchScript or a torch.export
ExportedProgram (`.pt2`). Each holds the same `Pipeline`, uint8 NHWC pixels in and
probabilities out, with a dynamic batch size, and carries the run's model.json.

ONNX goes through the torch.export-based exporter (`dynamo=True`, which needs onnxscript).
A model that torch.export cannot capture (data-dependent control flow, an operator it has no
translation for) falls back to the legacy TorchScript-based exporter, and the export says
so in one line naming the architecture and the reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["Pipeline", "OnnxGraph", "onnx_graph", "write_torchscript", "write_pt2",
           "load_torchscript", "load_pt2", "ONNX_OPSET", "LEGACY_OPSET"]

ONNX_OPSET = 18    # the opset torch.onnx's translations are written for: no version conversion
LEGACY_OPSET = 17
_IO = dict(input_names=["pixels"], output_names=["probabilities"])


class Pipeline(nn.Module):
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


def _example(size: int) -> torch.Tensor:
    # Batch 2: torch.export specializes a dimension seen as 0 or 1.
    return torch.zeros(2, size, size, 3, dtype=torch.uint8)


# ---------------------------------------------------------------- ONNX


class OnnxGraph:
    """An exported ONNX graph and how it was made: `exporter` is "dynamo" or "legacy"; `note`
    says why the legacy exporter was used (None when it was not)."""

    def __init__(self, proto, exporter: str, note: str | None = None):
        self.proto, self.exporter, self.note = proto, exporter, note


def onnx_graph(pipeline: Pipeline, arch: str, size: int) -> OnnxGraph:
    """The pipeline as ONNX: torch.export-based, or the legacy exporter when that fails.

    Raises:
        RuntimeError: neither exporter can export the model (the message names why).
    """
    dummy = _example(size)
    try:
        return OnnxGraph(_dynamo_proto(pipeline, dummy), "dynamo")
    except Exception as e:  # noqa: BLE001 - the exporter's errors share no narrower base
        why = reason(e)
    try:
        proto = _legacy_proto(pipeline, dummy)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(_unsupported(arch, e, why)) from e
    return OnnxGraph(proto, "legacy", f"{arch}: the torch.export-based ONNX exporter failed "
                                      f"({why}); exported with the legacy TorchScript one")


def _dynamo_proto(pipeline: Pipeline, dummy: torch.Tensor):
    # A failed capture is retried in strict mode, which logs the graph: that goes nowhere,
    # the one-line reason says it better.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        program = torch.onnx.export(pipeline, (dummy,), dynamo=True, verbose=False,
                                    opset_version=ONNX_OPSET, optimize=True,
                                    dynamic_shapes={"pixels": {0: "batch"}}, **_IO)
    return program.model_proto


def _legacy_proto(pipeline: Pipeline, dummy: torch.Tensor):
    import onnx
    buf = io.BytesIO()
    # Its deprecation warning and graph dump on failure are replaced by our own one line.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(pipeline, (dummy,), buf, dynamo=False, opset_version=LEGACY_OPSET,
                          dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}},
                          **_IO)
    return onnx.load_from_string(buf.getvalue())


def reason(e: BaseException) -> str:
    """The root cause of an exporter error in one short line: "Type: first line"."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", lines[0]).split()) if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _unsupported(arch: str, e: Exception, dynamo_reason: str) -> str:
    found = re.search(r"operator '([\w:.]+)'", str(e))
    if found:
        return (f"{arch} cannot be exported to ONNX: operator {found.group(1)} is not supported "
                f"(the torch.export-based exporter: {dynamo_reason}). Replace it in the model, "
                "or export --format pt2, or serve the run with `easycls serve`.")
    return f"{arch} cannot be exported to ONNX: {dynamo_reason}; the legacy exporter: {reason(e)}"


# ---------------------------------------------------------------- TorchScript and ExportedProgram


def write_torchscript(pipeline: Pipeline, size: int, path: Path, meta: dict) -> None:
    """A traced TorchScript module (`torch.jit.load`), model.json stored inside."""
    with _jit_allowed():
        traced = torch.jit.trace(pipeline, _example(size), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"model.json": json.dumps(meta)})


@contextlib.contextmanager
def _jit_allowed():
    # torch deprecates TorchScript itself (trace, save, load); the format is what was asked for.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        yield


def write_pt2(pipeline: Pipeline, size: int, path: Path, meta: dict) -> None:
    """A torch.export ExportedProgram (`torch.export.load`), model.json stored inside."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(pipeline, (_example(size),),
                                  dynamic_shapes={"pixels": {0: batch}})
    with warnings.catch_warnings():
        # Said of weights that share storage (folded batch norms); they are on the CPU, and
        # the export's self-check loads the file back and compares.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, str(path), extra_files={"model.json": json.dumps(meta)})


def load_torchscript(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with _jit_allowed():
        module = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda pixels: _run(module, pixels)


def load_pt2(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    module = torch.export.load(str(path)).module()
    return lambda pixels: _run(module, pixels)


@torch.inference_mode()
def _run(module: Callable, pixels: np.ndarray) -> np.ndarray:
    return module(torch.from_numpy(pixels)).numpy()
