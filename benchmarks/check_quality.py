"""What `easycls check` finds and what it costs, on generated data with planted problems.

    python benchmarks/check_quality.py duplicates --per-class 2000   # recall, false pairs, time
    python benchmarks/check_quality.py labels --per-class 60 --size 48 --seed 1
    python benchmarks/check_quality.py labels --label-model cnn --budget 480
    python benchmarks/check_quality.py split --groups 50 --seeds 3   # grouped vs random split
    python benchmarks/check_quality.py index --n 1000000              # the index alone

Data goes to a cache folder (never committed). Each part prints one JSON line with the
machine's cores and load average beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_conditions  # noqa: E402

from easycls.check import check  # noqa: E402
from easycls.check.planted import group_folder, planted_folder  # noqa: E402

CACHE = Path(os.environ.get("EASYCLS_BENCH_DATA", Path.home() / ".cache" / "easycls-bench"))


def _planted(classes: int, per_class: int, size: int, seed: int = 0) -> tuple[Path, dict]:
    root = CACHE / f"planted-{classes}x{per_class}-{size}-{seed}"
    if not (root / "planted.json").is_file():
        planted_folder(root, n_classes=classes, per_class=per_class, size=size, seed=seed)
    return root, json.loads((root / "planted.json").read_text())


def _rel(path: str, root: Path) -> str:
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


def duplicates(a) -> dict:
    root, planted = _planted(a.classes, a.per_class, a.size)
    t0, c0 = time.perf_counter(), time.process_time()
    r = check(str(root), out=CACHE / "out-dup", say=lambda s: None, workers=a.workers)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    truth = {frozenset(p) for p in planted["duplicates"]}
    found = {frozenset(p) for g in r["duplicates"] for p in combinations(
        [_rel(x, root) for x in g], 2)}
    return dict(part="duplicates", images=r["n_images"], planted_pairs=len(truth),
                reported_pairs=len(found), recall=round(len(truth & found) / len(truth), 4),
                false_pairs=len(found - truth),
                false_share=round(len(found - truth) / max(1, len(found)), 4),
                seconds=round(seconds, 1), cpu_seconds=round(cpu, 1),
                images_per_cpu_second=round(r["n_images"] / cpu, 1))


def labels(a) -> dict:
    root, planted = _planted(a.classes, a.per_class, a.size, seed=a.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    r = check(str(root), out=CACHE / "out-labels", labels=True, label_model=a.label_model,
              label_seconds=a.budget, say=lambda s: None)
    wrong = {w["path"] for w in planted["wrong_labels"]}
    top = [_rel(x["path"], root) for x in r["label_issues"][: 2 * len(wrong)]]
    return dict(part="labels", images=r["n_images"], planted_wrong=len(wrong),
                flagged=len(r["label_issues"]),
                recall_at_2x=round(sum(p in wrong for p in top) / len(wrong), 3),
                label_model=a.label_model, seed=a.seed, budget=a.budget,
                seconds=round(time.perf_counter() - t0, 1),
                cpu_seconds=round(time.process_time() - c0, 1))


def split(a) -> dict:
    """Validation accuracy against accuracy on new scenes, random vs grouped split.

    Each `--seeds` run trains both ways with that seed (the split and the weights), so the
    comparison is paired; the gap is read from the means over seeds, since one scene more or
    less right in a small validation set moves its accuracy by several points.
    """
    import easycls
    from easycls.bundle import load
    data = group_folder(CACHE / f"groups-{a.groups}x{a.frames}", groups_per_class=a.groups,
                        per_group=a.frames, seed=0)
    new = group_folder(CACHE / f"groups-new-{a.groups}x{a.frames}", groups_per_class=a.groups,
                       per_group=a.frames, seed=99)
    refs = sorted(str(p) for p in new.rglob("*.png"))
    truth = [Path(p).parent.name for p in refs]
    ways = [w for w in (("random", {}), ("grouped", {"split_by": "duplicates"}))
            if w[0] in a.ways.split(",")]
    runs = {way: [] for way, _ in ways}
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        for way, extra in ways:
            run = CACHE / f"run-{way}-{seed}"
            learn = easycls.fit(str(data), out=str(run), arch="resnet10t", pretrained=False,
                                size=32, epochs=a.epochs, seed=seed, overwrite=True, quiet=True,
                                **extra)
            pred = load(run).probabilities(refs).argmax(1)
            classes = learn.easycls.vocab
            held = float(np.mean([classes[p] == t for p, t in zip(pred, truth)]))
            runs[way].append(dict(seed=seed, valid=round(learn.easycls.metrics["accuracy"], 3),
                                  new_scenes=round(held, 3)))
            print(json.dumps(dict(way=way, **runs[way][-1])), file=sys.stderr, flush=True)
    out = {}
    for way, rows in runs.items():
        valid = float(np.mean([r["valid"] for r in rows]))
        new_acc = float(np.mean([r["new_scenes"] for r in rows]))
        out[way] = dict(valid_accuracy=round(valid, 3), new_scenes_accuracy=round(new_acc, 3),
                        gap=round(valid - new_acc, 3), runs=rows)
    return dict(part="split", epochs=a.epochs, groups_per_class=a.groups, frames=a.frames,
                seeds=a.seeds, new_scenes=len(refs) // a.frames, **out)


def index(a) -> dict:
    from easycls.check.index import near_pairs
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, a.n, dtype=np.uint64) * np.uint64(2)
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = near_pairs(hashes, a.max_distance)
    return dict(part="index", hashes=a.n, max_distance=a.max_distance, pairs=len(pairs),
                seconds=round(time.perf_counter() - t0, 1),
                cpu_seconds=round(time.process_time() - c0, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["duplicates", "labels", "split", "index"])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--budget", type=float, default=300)
    p.add_argument("--label-model", default="linear", choices=["linear", "cnn"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--ways", default="random,grouped", help="split: which splits to train")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--max-distance", type=int, default=10)
    a = p.parse_args()
    result = globals()[a.part](a)
    print(json.dumps({**result, **machine_conditions()}))


if __name__ == "__main__":
    main()
