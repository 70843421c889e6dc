"""Peak memory of `easycls evaluate` with many classes, one version against another.

Makes a class-folder dataset of N images in C classes (links to `store_speed.py`'s photos)
and a bundle of an untrained timm model with C outputs, then runs
`python -m easycls evaluate RUN DATA --split all --out OUT --quiet` with PYTHONPATH set to
each source tree in turn, and reports the child's peak RSS (from `wait4`), wall and CPU
seconds. Memory that grows with N x C shows as a peak that grows with N.

    git archive ec8630c easycls | tar -x -C /tmp/old-easycls
    python benchmarks/evaluate_memory.py --old /tmp/old-easycls --n 20000 --classes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_conditions, run_version  # noqa: E402
from predict_speed import bundle  # noqa: E402
from store_speed import photos  # noqa: E402


def class_folders(refs: list[str], n_classes: int, root: Path) -> Path:
    for i, r in enumerate(refs):
        d = root / f"c{i % n_classes:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / Path(r).name).symlink_to(r)
    return root


def run(src: str, run_dir: Path, data: Path, out: Path, bs: int) -> dict:
    r = run_version(src, ["evaluate", run_dir, data, "--split", "all", "--out", out, "--bs", bs,
                          "--quiet"], cwd=out.parent)
    return dict(wall_s=round(r["wall"], 1), cpu_s=round(r["cpu"], 1),
                peak_rss_mb=round(r["maxrss_mb"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bs", type=int, default=256)
    ap.add_argument("--data", default=os.environ.get(
        "EASYCLS_BENCH_DATA", Path.home() / ".cache" / "easycls-bench"))
    args = ap.parse_args()
    refs = photos(max(args.n, 20000), Path(args.data))[: args.n]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = bundle(tmp / "run", "resnet10t", args.size, args.classes)
        data = class_folders(refs, args.classes, tmp / "data")
        for name, src in (("old", args.old), ("new", args.new)):
            res[name] = run(src, run_dir, data, tmp / f"out-{name}", args.bs)
            print(name, json.dumps(res[name]), flush=True)
    print(json.dumps(dict(n=args.n, classes=args.classes, size=args.size, **res,
                          **machine_conditions()), indent=1))


if __name__ == "__main__":
    main()
