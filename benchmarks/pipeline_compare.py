"""Input pipeline alone (decode, resize, augment, collate; no model), side by side in one process.

easycls (decoded cache + one-pass batch augmentation) vs plain fastai
(`ImageDataLoaders.from_folder` with its default workers, `Resize` + `aug_transforms`)
vs a plain torchvision loader (`ImageFolder`, RandomResizedCrop + flip, 2 workers).
Every loader is built and run through one full pass first (cache built, workers up);
then passes alternate between them, and the medians are compared.

    python benchmarks/pipeline_compare.py --n 2000 --size 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, asl_like_folder, machine_conditions  # noqa: E402


def _pass(dl) -> float:
    n, t = 0, time.perf_counter()
    for xb, _ in dl:
        n += len(xb)
    return n / (time.perf_counter() - t)


def easycls_dl(data: Path, size: int, bs: int):
    from easycls.data.prepare import build_dataloaders
    from easycls.train import resolve_config
    return build_dataloaders(resolve_config(str(data), size=size, bs=bs, pretrained=False)).train


def fastai_dl(data: Path, size: int, bs: int):
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms
    return ImageDataLoaders.from_folder(data, valid_pct=0.2, seed=42, item_tfms=Resize(size),
                                        batch_tfms=aug_transforms(size=size), bs=bs).train


def torchvision_dl(data: Path, size: int, bs: int):
    import torch
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.75, 1.0)),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize([0.5] * 3, [0.25] * 3)])
    cores = len(os.sched_getaffinity(0))
    return torch.utils.data.DataLoader(datasets.ImageFolder(data, tf), batch_size=bs, shuffle=True,
                                       drop_last=True, num_workers=cores, persistent_workers=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    data = asl_like_folder(a.n)
    before = machine_conditions()
    first, dls = {}, {}
    for name, make in (
        ("easycls", easycls_dl),
        ("fastai", fastai_dl),
        ("torchvision", torchvision_dl),
    ):
        t = time.perf_counter()
        dls[name] = make(data, a.size, a.bs)
        first[name] = _pass(dls[name])
        print(f"{name}: built + first pass in {time.perf_counter() - t:.1f}s", flush=True)
    rates = alternate({k: (lambda dl=dl: _pass(dl)) for k, dl in dls.items()}, a.rounds)
    med = {k: median(v) for k, v in rates.items()}
    result = dict(args=vars(a), before=before, after=machine_conditions(), first_pass=first,
                  images_per_s=rates, median=med,
                  ratio_vs_fastai={k: v / med["fastai"] for k, v in med.items()})
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
