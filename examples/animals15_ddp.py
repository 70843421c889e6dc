"""Animals-15 straight from the Kaggle zip: augmentation, L1 + L2 regularization, multi-GPU.

    python examples/animals15_ddp.py --data ~/Downloads/archive.zip            # one GPU
    python examples/animals15_ddp.py --data ~/Downloads/archive.zip --gpus 4   # DDP on 4 GPUs
    python examples/animals15_ddp.py --smoke     # generated data, CPU, seconds

With --gpus N the script starts itself again under `accelerate launch`; inside, `fit` is the
same call: easycls shards the data and only rank 0 writes the run directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common

from easycls import fit
from easycls.distributed import session
from easycls.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="the Kaggle animal-image-classification zip (or its folder)")
    ap.add_argument("--gpus", type=int, default=1, help="processes / GPUs (DDP when > 1)")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--l1", type=float, default=1e-6, help="L1 penalty on the weights")
    ap.add_argument("--wd", type=float, default=1e-2, help="weight decay (L2)")
    ap.add_argument("--out", default="runs/animals15")
    ap.add_argument("--smoke", action="store_true", help="tiny generated zip, 1 epoch, CPU")
    args = ap.parse_args()
    if args.gpus > 1 and not _common.is_worker():
        _common.launch(args.gpus, [__file__, *sys.argv[1:]])
    else:
        train(args)


def train(args) -> None:
    settings = dict(
        arch=args.arch, epochs=args.epochs, l1=args.l1, wd=args.wd, augment=True, out=args.out
    )
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="animals15-smoke-"))
        settings.update(_common.SMOKE_FIT, l1=args.l1, wd=args.wd, out=str(tmp / "run"))
        args.data = str(_common.animals15_zip(tmp))
    learn = fit("animals15", path=args.data, **settings)
    if session().is_main:  # one report, written by the process that wrote the run
        evaluate(learn.easycls.run_dir, quiet=args.smoke)
        print(f"animals15: {learn.easycls.metrics.get('accuracy', 0):.4f} validation accuracy; "
              f"report in {learn.easycls.run_dir}")


if __name__ == "__main__":
    main()
