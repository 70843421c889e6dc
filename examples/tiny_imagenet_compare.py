"""Tiny ImageNet: small custom CNNs (plain `nn.Module`s) against timm's resnet18, in one table.

    python examples/tiny_imagenet_compare.py --data ~/data/tiny-imagenet-200 --epochs 10
    python examples/tiny_imagenet_compare.py --smoke        # generated data, CPU, seconds

`fit(arch=...)` takes a timm name, an `nn.Module`, or a callable that builds one from the
class count (used here, so each model gets the data's 200 classes). The table lists
accuracy, top-5 accuracy, parameters and training time per model; it is also written to
compare.csv.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import _common
from torch import nn

from easycls import fit


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: the classic course baseline."""

    def __init__(self, n_classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            conv_block(3, width),
            conv_block(width, 2 * width),
            conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, n_classes))

    def forward(self, x):
        return self.head(self.body(x))


def small_cnn(n_classes: int) -> nn.Module:
    return SmallCNN(n_classes, width=32)


def wide_cnn(n_classes: int) -> nn.Module:
    return SmallCNN(n_classes, width=64)


MODELS = {"small_cnn": small_cnn, "wide_cnn": wide_cnn, "resnet18": "resnet18"}


def compare(source: str, path: str | None, settings: dict, out: Path) -> list[dict]:
    rows = []
    for name, arch in MODELS.items():
        learn = fit(source, path=path, arch=arch, out=str(out / name), **settings)
        m = learn.easycls.metrics
        rows.append(
            dict(
                model=name,
                params=sum(p.numel() for p in learn.model.parameters()),
                accuracy=round(m["accuracy"], 4),
                top5_accuracy=round(m.get("top5_accuracy", float("nan")), 4),
                train_seconds=round(m["train_seconds"], 1),
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="the tiny-imagenet-200 folder or zip")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default="runs/tiny-imagenet-compare")
    ap.add_argument("--smoke", action="store_true", help="tiny generated class folders, 1 epoch, "
                                                         "CPU")
    args = ap.parse_args()
    source, out = "tiny-imagenet", Path(args.out)
    # From scratch for all three, so the comparison is about the architectures.
    settings = dict(epochs=args.epochs, pretrained=False, size=64, bs=128, lr=3e-3)
    if args.smoke:
        tmp = Path(tempfile.mkdtemp(prefix="tiny-imagenet-smoke-"))
        source, out = (
            str(_common.class_folders(tmp / "data", [f"n{i:08d}" for i in range(10)], 8)),
            tmp / "runs",
        )
        settings = {**_common.SMOKE_FIT, "bs": 16}
        settings.pop("arch")
    rows = compare(source, args.data, settings, out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'model':<10} {'params':>10} {'accuracy':>9} {'top5':>7} {'train s':>8}")
    for r in rows:
        print(f"{r['model']:<10} {r['params']:>10,} {r['accuracy']:>9.4f} "
              f"{r['top5_accuracy']:>7.4f} {r['train_seconds']:>8.1f}")
    print(f"table: {out / 'compare.csv'}")


if __name__ == "__main__":
    main()
