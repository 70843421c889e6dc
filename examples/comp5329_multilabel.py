"""COMP5329 multi-label images: F1-tuned thresholds, an evaluation report and a Kaggle submission.

    python examples/comp5329_multilabel.py --data ~/data/COMP5329S1A2Dataset
    python examples/comp5329_multilabel.py --smoke          # generated data, CPU, seconds

Steps: `fit` (multi-label is detected from train.csv; thresholds are tuned on the validation
split for F1 and saved in model.json), `evaluate` (F1-vs-threshold curves, per-class
thresholds, label frequency vs F1), then `submission.csv` (`ImageID,Labels`, labels
space-separated) in test.csv's order. The same from the shell:

    easycls fit comp5329 --path DATA
    easycls evaluate runs/comp5329
    easycls predict runs/comp5329 DATA/data --submission multilabel --order DATA/test.csv --csv
    submission.csv
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import _common

from easycls import fit, load
from easycls.bundle import expand_inputs
from easycls.evaluate import evaluate
from easycls.predict import write_submission


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="the COMP5329S1A2Dataset folder (train.csv, test.csv, data/)")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="runs/comp5329")
    ap.add_argument("--smoke", action="store_true", help="tiny generated dataset, 1 epoch, CPU")
    args = ap.parse_args()
    settings = dict(arch=args.arch, epochs=args.epochs, out=args.out)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="comp5329-smoke-"))
        args.data = str(_common.comp5329(tmp))
        settings.update(_common.SMOKE_FIT, out=str(tmp / "run"))
    learn = fit("comp5329", path=args.data, **settings)
    print("thresholds:", learn.easycls.metrics["thresholds"]["chosen"],
          [round(t, 3) for t in learn.easycls.metrics["thresholds"]["per_class"]])
    report = evaluate(learn.easycls.run_dir, quiet=args.smoke)
    print(f"F1 (samples) at the tuned thresholds: {report.metrics['f1_samples']:.4f}; "
          f"at 0.5: {report.metrics['at_0.5']['f1_samples']:.4f}")
    data = Path(args.data)
    out = learn.easycls.run_dir / "my_submission.csv"
    n, unreadable = write_submission(
        load(learn.easycls.run_dir),
        expand_inputs([data / "data"]),
        out,
        fmt="multilabel",
        order=data / "test.csv",
    )
    with out.open() as f:
        head = [next(csv.reader(f)) for _ in range(min(n, 3) + 1)]
    print(f"{out}: {n} rows ({len(unreadable)} unreadable), starts {head}")


if __name__ == "__main__":
    main()
