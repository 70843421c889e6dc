"""INT8 ONNX for CPUs, with onnxruntime's own quantization tools.

Static quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges)
calibrated on a few hundred of the run's training images, read from its data source as `fit`
read them; dynamic quantization when that data is not at hand. The int8 model is kept only if
its top-1 agrees with the float model's on the validation images at least `min_agreement` of
the time; its speed against the float model is measured on this machine, alternating runs.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.images import check_images, load_resized, parallel_map
from .errors import UserError

__all__ = ["Quantized", "QuantizeError", "quantize_int8", "training_refs", "throughput",
           "pixels_of", "MIN_AGREEMENT", "CALIBRATION_IMAGES"]

MIN_AGREEMENT = 0.99
CALIBRATION_IMAGES = 300
_BATCH = 32
_ROUNDS = 3


class QuantizeError(UserError):
    """The int8 model disagrees with the float one more often than allowed."""


@dataclass
class Quantized:
    """The int8 model, how it was made, and how it compares with the float model."""

    path: Path                 # model_int8.onnx
    method: str                # "static" or "dynamic"
    calibrated_on: int         # training images used for the activation ranges (0: dynamic)
    agreement: float           # share of images with the same top-1 class as the float model
    compared_on: int           # how many images
    compared_kind: str         # "validation" or "generated"
    float_images_per_s: float  # best of the alternating rounds, this machine
    int8_images_per_s: float

    @property
    def speedup(self) -> float:
        return self.int8_images_per_s / self.float_images_per_s


def quantize_int8(float_path: Path, calibration: Sequence[str], compare: Sequence[str],
                  compared_kind: str, min_agreement: float = MIN_AGREEMENT) -> Quantized:
    """Write `model_int8.onnx` beside `float_path` and check it against the float model.

    Args:
        float_path: the float model.onnx that `export` wrote and checked.
        calibration: training image references; none: dynamic quantization.
        compare: the images to measure top-1 agreement and speed on.
        compared_kind: what `compare` is, for the report ("validation" or "generated").
        min_agreement: the least top-1 agreement to keep the int8 model (0 to 1).

    Raises:
        QuantizeError: the agreement is below `min_agreement` (nothing is left written).
    """
    from .onnx_predictor import OnnxPredictor
    float_model = OnnxPredictor(float_path)
    out = float_path.with_name("model_int8.onnx")
    if calibration:
        _static(float_path, out, pixels_of(calibration, float_model.size))
    else:
        _dynamic(float_path, out)
    int8_model = OnnxPredictor(out)
    pixels = pixels_of(compare, float_model.size)
    agreement = float((_top1(float_model, pixels) == _top1(int8_model, pixels)).mean())
    if not agreement >= min_agreement:
        out.unlink(missing_ok=True)
        raise QuantizeError(f"the int8 model agrees with the float one on {agreement:.2%} of "
                            f"{len(compare)} {compared_kind} images, below the {min_agreement:.2%} "
                            "asked for; model_int8.onnx was not kept (lower --min-agreement "
                            "to keep it anyway)")
    speed = throughput({"float": float_model.run, "int8": int8_model.run}, pixels)
    return Quantized(out, "static" if calibration else "dynamic", len(calibration), agreement,
                     len(compare), compared_kind, speed["float"], speed["int8"])


def training_refs(run_dir: str | Path, n: int = CALIBRATION_IMAGES) -> list[str]:
    """Up to `n` readable training images of the run (not its validation split), spread over
    the data; [] when the run's data is not at hand."""
    try:
        from .data.prepare import run_items
        _, every, _ = run_items(run_dir, split="all")
        _, valid, _ = run_items(run_dir)
    except Exception:  # noqa: BLE001 - data moved, renamed or gone: dynamic quantization
        return []
    held_out = set(valid)
    train = [r for r in every if r not in held_out]
    train = train[::max(1, len(train) // n)][:n]
    bad = check_images(train)
    return [r for i, r in enumerate(train) if i not in bad]


def throughput(runs: dict[str, Callable[[np.ndarray], np.ndarray]], pixels: np.ndarray,
               rounds: int = _ROUNDS, clock: Callable[[], float] = time.perf_counter
               ) -> dict[str, float]:
    """Images/s of each run over `pixels` in batches, the runs alternating round by round
    (so a change in the machine's load hits all of them); the best round of each."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            start = clock()
            for i in range(0, len(pixels), _BATCH):
                run(pixels[i:i + _BATCH])
            best[name] = max(best[name], len(pixels) / max(clock() - start, 1e-9))
    return best


def pixels_of(refs: Sequence[str], size: int) -> np.ndarray:
    """uint8 (n, size, size, 3) model input of image references, decoded on every core."""
    return np.stack(list(parallel_map(lambda r: load_resized(r, size), list(refs))))


def _top1(model, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([model.run(pixels[i:i + _BATCH]).argmax(1)
                           for i in range(0, len(pixels), _BATCH)])


class _Calibration:
    """onnxruntime's CalibrationDataReader over uint8 pixels, a batch at a time."""

    def __init__(self, pixels: np.ndarray):
        self._batches = iter([pixels[i:i + _BATCH] for i in range(0, len(pixels), _BATCH)])

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"pixels": batch}


def _static(source: Path, out: Path, pixels: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    with _prepared(source) as prepared, _quiet():
        quantize_static(str(prepared), str(out), _Calibration(pixels),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def _dynamic(source: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with _prepared(source) as prepared, _quiet():
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)


@contextlib.contextmanager
def _prepared(source: Path) -> Iterator[Path]:
    """The model after onnxruntime's pre-processing for quantization (shape inference, graph
    optimization), as its documentation asks; the model itself where that step fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(str(source), str(prepared))
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs
            prepared = source
        yield prepared


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # onnxruntime's quantization tools log to the root logger: that the uint8 input is not
    # quantized (it is integer already), how far calibration got.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
