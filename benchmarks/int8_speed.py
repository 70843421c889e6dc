"""CPU throughput of an exported model, float32 `model.onnx` against `model_int8.onnx`.

Both models run in this process on onnxruntime's CPU provider, on the same uint8 pixels of
the run's validation images, in batches of 32, alternating round by round (so a change in
the machine's load hits both); prints each round's images/s, the median and best of each
and their ratios, with the load average before and after. Export first:

    easycls export RUN --quantize int8
    python benchmarks/int8_speed.py RUN --rounds 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_conditions  # noqa: E402

from easycls.export import validation_refs  # noqa: E402
from easycls.onnx_predictor import OnnxPredictor  # noqa: E402
from easycls.quantize import pixels_of, throughput  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="run directory holding onnx/model_int8.onnx")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=1000, help="validation images, at most")
    args = ap.parse_args()
    folder = args.run / "onnx"
    models = {"float32": OnnxPredictor(folder / "model.onnx"),
              "int8": OnnxPredictor(folder / "model_int8.onnx")}
    pixels = pixels_of(validation_refs(args.run, args.images), models["float32"].size)
    print(json.dumps({"images": len(pixels), **machine_conditions()}))
    rounds: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.rounds):
        speed = throughput({k: m.run for k, m in models.items()}, pixels, rounds=1)
        print(json.dumps({"round": i + 1, **{k: round(v, 1) for k, v in speed.items()}}),
              flush=True)
        for k, v in speed.items():
            rounds[k].append(v)
    for name, pick in (("median", np.median), ("best", np.max)):
        f32, i8 = pick(rounds["float32"]), pick(rounds["int8"])
        print(f"{name} of {args.rounds}: float32 {f32:.1f} images/s, int8 {i8:.1f} images/s: "
              f"{i8 / f32:.2f}x")
    print(json.dumps({"after": machine_conditions()}))


if __name__ == "__main__":
    main()
