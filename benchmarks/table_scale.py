"""Labelling, splitting and the test split at ImageNet row counts, without pixels.

A listing of N relative paths (`train/<class>/x.jpg`, `test/<class>/x.jpg`, 1,000 classes)
goes through what `fit` does before it touches an image: reading the layout into an item
table (labels, the labelled test split), the random validation split, the table checks,
dropping a few unreadable items, and encoding the labels. Each step is timed in process
CPU seconds (best of `--reps`) at each size; linear work shows a ratio near the size ratio.

    python benchmarks/table_scale.py --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_conditions  # noqa: E402


def listing(n: int, n_classes: int = 1000, test_share: float = 0.04) -> list[str]:
    n_test = int(n * test_share)
    train = [f"train/c{i % n_classes:04d}/{i:07d}.jpg" for i in range(n - n_test)]
    return train + [f"test/c{i % n_classes:04d}/t{i:07d}.jpg" for i in range(n_test)]


def steps(files: list[str]) -> dict[str, float]:
    """CPU seconds of each step on one listing."""
    from easycls.data.loaders import encode_labels
    from easycls.data.sources import from_listing
    try:
        from easycls.data.prepare import random_split
    except ImportError:  # versions before data/prepare.py
        from easycls.train import _random_split as random_split
    out, t = {}, time.process_time()

    def lap(name: str) -> None:
        nonlocal t
        now = time.process_time()
        out[name] = now - t
        t = now

    table = from_listing(files, str, "bench")
    lap("read layout + labelled test split")
    table.is_valid = random_split(len(table.refs), 0.2, 0)
    table.check()
    lap("random split + checks")
    table.drop({i: "unreadable" for i in range(0, len(table.refs), 997)})
    table.check()
    lap("drop unreadable + checks")
    encode_labels(table.labels, table.classes, False)
    lap("encode labels")
    assert table.test_labels and len(table.test_labels) == len(table.test_refs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    res = {}
    for n in args.sizes:
        files = listing(n, args.classes)
        runs = [steps(files) for _ in range(args.reps)]
        res[n] = {k: min(r[k] for r in runs) for k in runs[0]}
        res[n]["total"] = min(sum(r.values()) for r in runs)
        print(n, json.dumps({k: round(v, 4) for k, v in res[n].items()}), flush=True)
    a, b = args.sizes[0], args.sizes[-1]
    ratios = {k: round(res[b][k] / max(res[a][k], 1e-9), 1) for k in res[a]}
    print(json.dumps(dict(sizes=args.sizes, ratio_of_cpu_time=ratios, size_ratio=b / a,
                          **machine_conditions()), indent=1))


if __name__ == "__main__":
    main()
