"""Tiny ImageNet: small custom CNNs (plain `nn.Module`s) against timm's resnet18, in one table.

    python examples/tiny_imagenet_compare.py --data ~/data/tiny-imagenet-200 --epochs 10
    python examples/tiny_imagenet_compare.py --smoke        # generated data, CPU, seconds

`fit(arch=...)` takes a timm name, an `nn.Module`, or a callable that builds one from the
class count (used here, so each model gets the data's 200 classes). Each model trains into
its own run directory; `easycls compare` (here `compare_runs`) then tabulates them: accuracy,
top-5 accuracy, training time, images/s and the best epoch per model, in compare.md and
compare.csv, with the curves in compare.png. The same from the shell:

    easycls compare runs/tiny-imagenet-compare/* --out runs/tiny-imagenet-compare
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common
from torch import nn

from easycls import compare_runs, fit


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


def train_all(source: str, path: str | None, settings: dict, out: Path) -> dict[str, int]:
    """Train every model into out/<name>; returns each model's parameter count."""
    params = {}
    for name, arch in MODELS.items():
        learn = fit(source, path=path, arch=arch, out=str(out / name), **settings)
        params[name] = sum(p.numel() for p in learn.model.parameters())
    return params


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
    params = train_all(source, args.data, settings, out)
    compare_runs([out / name for name in MODELS], out=out, say=print)
    print("parameters: " + ", ".join(f"{name} {n:,}" for name, n in params.items()))
    print(f"table: {out / 'compare.md'}, {out / 'compare.csv'}; curves: {out / 'compare.png'}")


if __name__ == "__main__":
    main()
