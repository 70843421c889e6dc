"""End to end, whole-process wall time: `easycls fit` vs the plain fastai recipe.

Each run is a fresh process (imports, data, 3 epochs from scratch, final validation);
the two sides alternate (A B B A ...) so machine load hits both alike. easycls starts
every run with an empty cache directory, so its figure includes building the cache.

    python benchmarks/e2e_compare.py --n 2000 --arch mobilenetv3_small_100 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, asl_like_folder, machine_conditions  # noqa: E402

HERE = Path(__file__).parent


def _run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t, done.stdout


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--arch", default="mobilenetv3_small_100")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    data = asl_like_folder(a.n)
    tmp = Path(tempfile.mkdtemp(prefix="e2e-"))
    common = ["--arch", a.arch, "--size", str(a.size), "--bs", str(a.bs), "--epochs", str(a.epochs),
              "--lr", str(a.lr)]
    acc: dict[str, list[float]] = {"easycls": [], "fastai": []}

    def easycls() -> float:
        out = tmp / f"run-{time.time_ns()}"
        env = {**os.environ, "EASYCLS_CACHE": str(out) + "-cache"}  # cold cache: build included
        wall, _ = _run(
            [
                sys.executable,
                "-m",
                "easycls",
                "fit",
                str(data),
                *common,
                "--no-pretrained",
                "--out",
                str(out),
                "--quiet",
            ],
            env,
        )
        acc["easycls"].append(json.loads((out / "metrics.json").read_text())["accuracy"])
        return wall

    def fastai() -> float:
        wall, stdout = _run(
            [sys.executable, str(HERE / "plain_fastai.py"), str(data), *common], dict(os.environ)
        )
        acc["fastai"].append(json.loads(stdout.strip().splitlines()[-1])["accuracy"])
        return wall

    before = machine_conditions()
    walls = alternate({"easycls": easycls, "fastai": fastai}, a.rounds)
    result = dict(args=vars(a), before=before, after=machine_conditions(), wall_seconds=walls,
                  accuracy=acc, wall_ratio=median(walls["easycls"]) / median(walls["fastai"]))
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
