"""`easycls predict` throughput and peak memory, one version against another, same files.

Runs the CLI as a subprocess (`python -m easycls predict RUN FOLDER --csv OUT`) with
PYTHONPATH set to each source tree in turn (e.g. today's and the previous commit, taken
with `git archive`), alternating, on the first N photos of `store_speed.py`'s set. Reports
per version: wall seconds, process CPU seconds and peak RSS of the child, and images/s
after subtracting the start-up (the same command on one image). The bundle is an
untrained timm model (the speed does not depend on the weights).

    git archive ec8630c easycls | tar -x -C /tmp/old-easycls
    python benchmarks/predict_speed.py --old /tmp/old-easycls --n 2000 --rounds 3
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
from store_speed import photos  # noqa: E402


def bundle(out: Path, arch: str, size: int, n_classes: int = 10) -> Path:
    """A run directory holding an untrained timm model (speed does not depend on weights)."""
    import timm

    from easycls.bundle import save_bundle
    model = timm.create_model(arch, pretrained=False, num_classes=n_classes)
    classes = [f"c{i:04d}" for i in range(n_classes)]
    return save_bundle(model, out, arch=arch, classes=classes, size=size, mean=[0.5] * 3,
                       std=[0.25] * 3)


def run(src: str, run_dir: Path, folder: Path, out: Path) -> dict:
    """One CLI run: wall s, child CPU s, child peak RSS (MB)."""
    return run_version(src, ["predict", run_dir, folder, "--csv", out], cwd=out.parent)


def link_files(refs: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for r in refs:
        (folder / Path(r).name).symlink_to(r)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="source tree of the version to compare with")
    ap.add_argument("--new", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arch", default="resnet10t")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=os.environ.get(
        "EASYCLS_BENCH_DATA", Path.home() / ".cache" / "easycls-bench"))
    args = ap.parse_args()
    refs = photos(max(args.n, 20000), Path(args.data))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = bundle(tmp / "run", args.arch, args.size)
        many, one = link_files(refs, tmp / "many"), link_files(refs[:1], tmp / "one")
        versions = {"old": args.old, "new": args.new}
        res: dict = {k: {"many": [], "one": []} for k in versions}
        for r in range(args.rounds):
            for name in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                for what, folder in (("one", one), ("many", many)):
                    res[name][what].append(run(versions[name], run_dir, folder, tmp / "o.csv"))
                print(name, json.dumps(res[name]["many"][-1]), flush=True)
    summary = {}
    for name, r in res.items():
        best = min(r["many"], key=lambda x: x["wall"])
        start = min(x["wall"] for x in r["one"])
        cpu_start = min(x["cpu"] for x in r["one"])
        summary[name] = dict(
            images_per_s=round((args.n - 1) / (best["wall"] - start), 1),
            images_per_cpu_s=round((args.n - 1) / (min(x["cpu"] for x in r["many"]) - cpu_start),
                                   1),
            wall_s=round(best["wall"], 1), startup_s=round(start, 1),
            peak_rss_mb=round(max(x["maxrss_mb"] for x in r["many"])))
    ratio = summary["new"]["images_per_s"] / summary["old"]["images_per_s"]
    print(json.dumps(dict(n=args.n, size=args.size, arch=args.arch, **summary,
                          new_vs_old=round(ratio, 2), **machine_conditions()), indent=1))


if __name__ == "__main__":
    main()
