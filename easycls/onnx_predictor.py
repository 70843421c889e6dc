"""Label images with an exported `model.onnx` on onnxruntime: numpy, Pillow and onnxruntime
only, never torch. `easycls serve --onnx` runs on it, and `easycls export` copies this file
verbatim beside `predict.py` (as `easycls_onnx.py`, with `easycls_images.py` and
`easycls_decide.py`), so the exported script decides exactly as the server does.

The graph takes uint8 (batch, size, size, 3) pixels, made by the same `to_pixels` as the
torch `Predictor`, and returns probabilities; the classes, thresholds and input size are in
the model's metadata (the run's model.json, key by key).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:  # inside the easycls package
    from .data.images import available_cores, to_pixels
    from .decide import Decider
except ImportError:  # the copies beside an exported predict.py
    from easycls_decide import Decider
    from easycls_images import available_cores, to_pixels

__all__ = ["OnnxPredictor", "read_onnx_meta"]


def read_onnx_meta(session: ort.InferenceSession) -> dict:
    """model.json as `easycls export` stored it in the ONNX metadata (JSON-encoded values)."""
    props = session.get_modelmeta().custom_metadata_map
    # "preprocessing" is words; onnxruntime's quantization tools add their own "onnx.*" marks.
    return {k: json.loads(v) for k, v in props.items()
            if k != "preprocessing" and not k.startswith("onnx.")}


class OnnxPredictor(Decider):
    """An exported model on onnxruntime's CPU provider, with the torch `Predictor`'s
    interface: `probabilities`, `decide`, `predict`, `classes`, `thresholds`.

    Example:
        >>> p = OnnxPredictor("runs/digits-resnet18/onnx/model.onnx")
        >>> label, prob = p.predict("seven.png")
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:  # idle threads sleep: other threads (a server's decoding) get the cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        super().__init__(read_onnx_meta(self.session))

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities of uint8 (n, size, size, 3) pixels, in one call."""
        return self.session.run(["probabilities"], {"pixels": pixels})[0]

    def probabilities(self, images: Sequence, bs: int = 64, workers: int | None = None
                      ) -> np.ndarray:
        """(n, classes) probabilities of image files, PIL images or pixel arrays, decoded on
        `workers` threads (default: every core) `bs` at a time.

        Raises:
            UnreadableImage: an image cannot be decoded.
        """
        images, outs = list(images), []
        with ThreadPoolExecutor(max_workers=workers or available_cores()) as pool:
            for s in range(0, len(images), max(1, bs)):
                chunk = images[s:s + bs]
                pixels = pool.map(lambda im: to_pixels(im, self.size), chunk)
                outs.append(self.run(np.stack(list(pixels))))
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), np.float32)
