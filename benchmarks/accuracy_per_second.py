"""Accuracy per wall-second: `easycls fit` (defaults, and under time budgets) vs plain fastai.

Every run is a whole fresh process (imports, data, training, final validation), timed from
outside. The sides alternate (fastai first in even rounds, last in odd ones) so machine load
hits them alike, and the load average is recorded around every run. easycls starts each run
with an empty cache directory, so its wall time includes decoding and caching the images.
A budget of `fastai` means "the wall time of the latest plain fastai run on this dataset",
`default` that of the latest default easycls run (a budget run against the fixed-epoch run
of the same length).

    python benchmarks/accuracy_per_second.py --dataset asl --budgets fastai --rounds 1
    python benchmarks/accuracy_per_second.py --dataset mosaic --budgets fastai
    # from results:
    python benchmarks/accuracy_per_second.py --plot docs/img/accuracy_per_second.png

Results are appended, one JSON line a run, to `--results` (default aps_results.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_data import asl_folder, hard_folder, mosaic_csv  # noqa: E402

HERE = Path(__file__).parent


def _data(name: str) -> tuple[list[str], list[str]]:
    """(easycls source args, plain fastai args) of a dataset."""
    folders = {"asl": asl_folder, "hard": lambda: hard_folder(1800, 96, 20),
               "hard40": hard_folder}
    if name in folders:
        folder = str(folders[name]())
        return [folder], [folder]
    folder = mosaic_csv()
    return [str(folder / "train.csv"), "--images", str(folder / "data")], [
        str(folder),
        "--multi-label",
    ]


def _timed(cmd: list[str], env: dict | None = None) -> tuple[float, str, list[float]]:
    load = os.getloadavg()[0]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout, [round(load, 2), round(os.getloadavg()[0], 2)]


def _score(metrics: dict) -> dict:
    if "accuracy" in metrics:
        return dict(accuracy=metrics["accuracy"])
    th = metrics.get("thresholds", {})
    return {
        "f1_samples": metrics["f1_samples"],
        "f1_samples_at_0.5": metrics["at_0.5"]["f1_samples"],
        "thresholds": th.get("chosen"),
    }


def run_fastai(args, data_args: list[str]) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "plain_fastai_aps.py"),
        *data_args,
        "--size",
        str(args.size),
        "--epochs",
        str(args.fastai_epochs or args.epochs),
        "--lr",
        str(args.fastai_lr),
        *shlex.split(args.fastai_args),
    ]
    wall, out, load = _timed(cmd)
    return dict(side="fastai", wall=wall, load=load, epochs=args.fastai_epochs or args.epochs,
                args=args.fastai_args, **json.loads(out.strip().splitlines()[-1]))


def run_easycls(args, data_args: list[str], budget: float | None, tmp: Path) -> dict:
    out = tmp / f"run-{time.time_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "easycls",
        "fit",
        *data_args,
        "--arch",
        "resnet18",
        "--no-pretrained",
        "--size",
        str(args.size),
        "--epochs",
        str(args.epochs),
        "--out",
        str(out),
        "--quiet",
        *shlex.split(args.easycls_args),
    ]
    if budget is not None:
        cmd += ["--time-budget", f"{budget:.0f}s"]
    env = {**os.environ, "EASYCLS_CACHE": str(out) + "-cache"}
    wall, stdout, load = _timed(cmd, env)
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    side = "easycls" if budget is None else "easycls-budget"
    return dict(
        side=side,
        wall=wall,
        load=load,
        budget=budget,
        args=args.easycls_args,
        train_seconds=metrics.get("train_seconds"),
        lr=config.get("lr"),
        size=config.get("size"),
        epochs=metrics.get("planned_epochs", config.get("epochs")),
        bs=config.get("bs"),
        log=[line for line in stdout.splitlines() if "lr" in line][:3],
        **_score(metrics),
    )


def measure(args) -> None:
    ec_args, fa_args = _data(args.dataset)
    tmp = Path(tempfile.mkdtemp(prefix="aps-"))
    budgets = [b for b in args.budgets.split(",") if b]
    last = {"fastai": None, "default": None}  # the walls a budget of that name means
    for r in range(args.rounds):
        sides = ["fastai", "easycls"] + [f"budget:{b}" for b in budgets]
        for side in sides if r % 2 == 0 else sides[::-1]:
            if side == "fastai":
                if args.no_fastai:
                    continue
                rec = run_fastai(args, fa_args)
                last["fastai"] = rec["wall"]
            elif side == "easycls":
                if args.no_default:
                    continue
                rec = run_easycls(args, ec_args, None, tmp)
                last["default"] = rec["wall"]
            else:
                b = side.split(":", 1)[1]
                rec = run_easycls(args, ec_args, last[b] if b in last else float(b), tmp)
            rec.update(dataset=args.dataset, round=r, time=time.strftime("%Y-%m-%d %H:%M:%S"))
            print(json.dumps(rec), flush=True)
            with open(args.results, "a") as f:
                f.write(json.dumps(rec) + "\n")


def plot(results: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    marks = {"fastai": ("o", "plain fastai"), "easycls": ("s", "easycls defaults"),
             "easycls-budget": ("^", "easycls --time-budget")}
    for ax, (ds, key, title) in zip(
        axes,
        [
            ("asl", "accuracy", "ASL-like folder: accuracy"),
            ("hard", "accuracy", "hard folder (20 classes): accuracy"),
            ("mosaic", "f1_samples", "mosaic CSV: tuned samples-F1"),
        ],
    ):
        for side, (m, label) in marks.items():
            pts = [(r["wall"], r[key]) for r in recs if r["dataset"] == ds and r["side"] == side]
            if pts:
                ax.scatter(*zip(*pts), marker=m, label=label, s=50)
        ax.set(title=title, xlabel="whole-process wall seconds", ylabel=key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", choices=["asl", "hard", "hard40", "mosaic"], default="asl",
                   help="asl: 29 classes (plain fastai 0.44 in 3 epochs); hard: 20 classes with "
                   "distractors (fastai about 0.5); hard40: 40 such classes (fastai 0.30)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--fastai-lr", type=float, default=2e-3)
    p.add_argument("--fastai-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--budgets", default="", help="comma list: seconds, 'fastai' or 'default'")
    p.add_argument("--easycls-args", default="", help="extra `easycls fit` options")
    p.add_argument("--fastai-args", default="")
    p.add_argument("--no-default", action="store_true", help="skip the default easycls run")
    p.add_argument("--no-fastai", action="store_true", help="skip the plain fastai run")
    p.add_argument("--results", type=Path, default=Path("aps_results.jsonl"))
    p.add_argument("--plot", type=Path, default=None, help="only plot --results into this PNG")
    args = p.parse_args()
    if args.plot:
        plot(args.results, args.plot)
    else:
        measure(args)


if __name__ == "__main__":
    main()
