"""Peak memory of single-label scoring alone: all probabilities at once vs running counts.

No model, no images: batches of random softmax rows (N images, C classes) are scored in a
fresh process either the old way (concatenate every batch, then `single_label_metrics`
and a per-image loss array, as `evaluate` did) or with `SingleLabelTally` (what it does now).
Reports the child's peak RSS above its RSS before scoring.

    python benchmarks/scoring_memory.py --n 100000 --classes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import each_way  # noqa: E402

_CHILD = r"""
import json, resource, sys
import numpy as np, torch
from easycls.metrics import single_label_metrics
from easycls.tally import SingleLabelTally
n, c, way = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
def batches(bs=256):
    for s in range(0, n, bs):
        x = rng.random((min(bs, n - s), c), dtype=np.float32)
        yield x / x.sum(1, keepdims=True), rng.integers(0, c, len(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if way == "all-at-once":
    ps, ts = zip(*batches())
    probs, targets = np.concatenate(ps), np.concatenate(ts)
    m = single_label_metrics(torch.as_tensor(probs), torch.as_tensor(targets))
    losses = -np.log(np.clip(probs[np.arange(n), targets], 1e-12, None))
else:
    tally = SingleLabelTally(c)
    for p, t in batches():
        tally.update(p, t)
    m, losses = tally.metrics(), tally.losses
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(way=way, growth_mb=round((peak - before) / 1024), acc=m["accuracy"])))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    out = each_way(_CHILD, [args.n, args.classes], ("all-at-once", "running"))
    print(json.dumps(dict(n=args.n, classes=args.classes, **out, loadavg=os.getloadavg())))


if __name__ == "__main__":
    main()
