"""Peak memory of fit's final validation scores with many classes: all probabilities at once
(`get_preds`, then the metrics, as `fit` did) against running counts (`TallyValidation`).

Each way runs in a fresh process on the same fastai Learner: N validation items of 8x8
random inputs, a linear model with C outputs (the model is not what is measured), batches
of 256. Reports the peak RSS growth over the process's baseline after building the Learner.

    python benchmarks/valid_memory.py --n 50000 --classes 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import each_way, machine_conditions  # noqa: E402

_CHILD = r"""
import json, resource, sys
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from easycls.metrics import TallyValidation, single_label_metrics
from easycls.tally import SingleLabelTally

n, c, way = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
items = list(zip(torch.randn(n, 64, generator=g), torch.randint(0, c, (n,), generator=g)))
dl = DataLoader(items, bs=256)
learn = Learner(DataLoaders(dl, dl), torch.nn.Linear(64, c), loss_func=CrossEntropyLossFlat())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if way == "all_at_once":
    probs, targets = learn.get_preds(ds_idx=1)
    m = single_label_metrics(probs, targets)
else:
    tally = SingleLabelTally(c)
    learn.get_preds(ds_idx=1, with_preds=False, with_targs=False, cbs=[TallyValidation(tally)])
    m = tally.metrics()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(growth_mb=round((peak - base) / 1024), accuracy=m["accuracy"],
                      valid_loss=round(m["valid_loss"], 6))))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args()
    res = each_way(_CHILD, [args.n, args.classes], ("all_at_once", "running"))
    print(json.dumps(dict(n=args.n, classes=args.classes, **res, **machine_conditions()),
                     indent=1))


if __name__ == "__main__":
    main()
