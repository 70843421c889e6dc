"""ASL alphabet (29 classes): the same training on 1 process and on N GPUs, timed side by side.

    python examples/asl.py --data ~/data/asl-alphabet --gpus 1,2,4
    python examples/asl.py --smoke              # generated data, one CPU process, seconds
    python examples/asl.py --smoke --gpus 1,2   # also 2 CPU processes (gloo), about a minute

Each count > 1 runs under `accelerate launch` (DDP); the batch size is per process, so N
processes see N times the images per step. The table shows training seconds, images per
second, speedup and validation / test accuracy per count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import _common

from easycls import fit


def run_one(args, processes: int) -> Path:
    out = Path(args.out) / f"{processes}proc"
    if processes == 1:
        fit("asl", path=args.data, out=str(out), **settings(args))
    else:
        _common.launch(
            processes,
            [
                __file__,
                "--worker",
                "--data",
                args.data,
                "--out",
                str(out),
                "--epochs",
                str(args.epochs),
                *(["--smoke"] if args.smoke else []),
            ],
        )
    return out


def settings(args) -> dict:
    return (
        {**_common.SMOKE_FIT} if args.smoke else dict(epochs=args.epochs, arch="resnet34", size=128)
    )


def row(processes: int, run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    test = run / "test_metrics.json"
    return dict(
        processes=processes,
        train_seconds=m["train_seconds"],
        accuracy=m["accuracy"],
        test_accuracy=json.loads(test.read_text())["test_accuracy"] if test.exists() else None,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="the asl-alphabet folder or zip")
    ap.add_argument("--gpus", default="1,2", help="process counts to compare, e.g. 1,2,4")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="runs/asl-scaling")
    ap.add_argument("--smoke", action="store_true", help="tiny generated ASL layout, CPU")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # started by `accelerate launch`: one rank of a DDP run
        fit("asl", path=args.data, out=args.out, **settings(args))
        return
    counts = [int(c) for c in args.gpus.split(",")]
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="asl-smoke-"))
        args.data, args.out = str(_common.asl(tmp / "data")), str(tmp / "runs")
        counts = counts if "--gpus" in sys.argv else [1]
    rows = [row(n, run_one(args, n)) for n in counts]
    base = rows[0]["train_seconds"]
    print(f"{'processes':>9} {'train s':>8} {'speedup':>8} {'valid acc':>9} {'test acc':>8}")
    for r in rows:
        test = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        print(f"{r['processes']:>9} {r['train_seconds']:>8.1f} {base / r['train_seconds']:>8.2f} "
              f"{r['accuracy']:>9.4f} {test:>8}")
    (Path(args.out) / "scaling.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
