"""The cached data path's host work per batch: item-by-item fastai loader vs batch-level `FeedDL`.

What the CPU must do per batch when a GPU does the float work (conversion, augmentation,
normalization): read the batch's rows of the uint8 cache and hand over one uint8 batch.
Old: fastai's `TfmdDL` over the item dataset easycls had before (one tensor per item, a
permute each, `torch.stack`), as `make_dataloaders` built it. New: `FeedDL` (one `np.take` per
batch,
in its prefetch thread). Both iterate `create_batches` over a shuffled pass of a
generated (N, S, S, 3) uint8 memory map (S = 255, the stored size for 224 px training).
Rounds alternate (old, new, new, old, ...) and each is timed in **process CPU time**
(all threads), not wall time, because the machine is shared. torch's own threads count
too: on a busy machine OpenMP's spinning threads make `torch.stack` cost far more CPU
time, so also run it with `--threads 1`.

    python benchmarks/feed_speed.py --n 1024 --size 224 --bs 256 --rounds 4
    python benchmarks/feed_speed.py --n 1024 --size 224 --bs 256 --rounds 4 --threads 1

`--overlap` also trains 12 steps of a CPU model (`--overlap-arch`, one torch thread, so the
other core is free) on JPEGs decoded on access (no cache: loading is then as slow as the
step) and reports the loader wait per step over the step time (`LoaderTiming`), with the
batches made on demand (`prefetch=0`) and made ahead in the thread (`prefetch=2`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine_conditions  # noqa: E402


def memmap_cache(n: int, store: int, folder: Path) -> np.ndarray:
    """A (n, store, store, 3) uint8 .npy like the decoded cache (noise: content does not matter)."""
    path = folder / f"feed-{n}-{store}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, store, store, 3))
        for i in range(0, n, 64):
            arr[i:i + 64] = rng.integers(0, 256, arr[i:i + 64].shape, dtype=np.uint8)
        arr.flush()
        del arr
    return np.load(path, mmap_mode="r")


class ItemDataset:
    """easycls's dataset before `FeedDL` (verbatim in effect): each item a copied row,
    permuted to CHW, as its own tensor; fastai's collate then stacks them."""

    def __init__(self, array: np.ndarray, targets: np.ndarray):
        self.array, self.targets = array, targets

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int):
        import torch
        from fastai.torch_core import TensorCategory, TensorImage
        x = TensorImage(torch.from_numpy(np.array(self.array[i])).permute(2, 0, 1))
        return x, TensorCategory(torch.as_tensor(self.targets[i]))


def loaders(array: np.ndarray, bs: int):
    from fastai.data.core import TfmdDL

    from easycls.data.feed import FeedDL
    from easycls.data.loaders import ImageDataset, Pixels
    targets = np.arange(len(array)) % 10
    ds = ImageDataset(Pixels([str(i) for i in range(len(array))], array.shape[1], array), targets,
                      False, 0)
    return {"old": TfmdDL(ItemDataset(array, targets), bs=bs, shuffle=True, drop_last=True),
            "new": FeedDL(ds, bs=bs, shuffle=True, drop_last=True)}


def cpu_rate(dl) -> float:
    """Images per process-CPU-second of one shuffled pass of `dl.create_batches`."""
    n, t = 0, time.process_time()
    for xb, _ in dl.create_batches(dl.get_idxs()):
        n += len(xb)
    return n / (time.process_time() - t)


def overlap(data: Path, arch: str, size: int, bs: int, steps: int) -> dict:
    """Loader wait / step time while `arch` trains on JPEGs decoded on access (no cache)."""
    import timm
    import torch
    from fastai.callback.progress import ProgressCallback  # noqa: F401  (Learner.no_bar)
    from fastai.learner import Learner

    from easycls.callbacks import LoaderTiming
    from easycls.data.feed import FeedDL
    from easycls.data.loaders import ImageDataset, Pixels, _batch_tfms
    refs = sorted(str(p) for p in data.rglob("*.jpg"))[: bs * (steps + 1)]
    ds = ImageDataset(Pixels(refs, size), np.arange(len(refs)) % 29, False, 0)
    out = {}
    torch.set_num_threads(1)  # one core trains, the other is free for the loader thread
    for prefetch in (0, 2):
        dl = FeedDL(ds, bs=bs, shuffle=True, drop_last=True, workers=1, prefetch=prefetch,
                    after_batch=_batch_tfms(size, [0.5] * 3, [0.25] * 3, False, False, False))
        from fastai.data.core import DataLoaders
        model = timm.create_model(arch, pretrained=False, num_classes=29)
        timing = LoaderTiming(skip=1)
        learn = Learner(
            DataLoaders(dl, dl), model, loss_func=torch.nn.CrossEntropyLoss(), cbs=[timing]
        )
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 1e-3, cbs=[_Stop(steps)])
        out[f"prefetch={prefetch}"] = timing.summary()
    return out


class _Stop:
    """Ends the fit after `n` training batches (a fastai callback, built lazily)."""

    def __new__(cls, n):
        from fastai.callback.core import Callback, CancelFitException

        class Stop(Callback):
            order = 100

            def after_batch(self):
                if self.training and self.iter + 1 >= n:
                    raise CancelFitException()
        return Stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; 1 keeps OpenMP from spinning)")
    p.add_argument("--overlap", action="store_true")
    p.add_argument("--overlap-arch", default="mobilenetv3_small_100")
    p.add_argument("--overlap-bs", type=int, default=32)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from easycls.data.loaders import train_store_size
    folder = Path(tempfile.gettempdir()) / "easycls-feed-bench"
    folder.mkdir(exist_ok=True)
    array = memmap_cache(a.n, train_store_size(a.size, True), folder)
    dls = loaders(array, a.bs)
    before = machine_conditions()
    for dl in dls.values():
        cpu_rate(dl)  # warm-up: page cache, first thread start
    rates = alternate({k: (lambda dl=dl: cpu_rate(dl)) for k, dl in dls.items()}, a.rounds)
    med = {k: median(v) for k, v in rates.items()}
    result = dict(
        args=vars(a),
        torch_threads=torch.get_num_threads(),
        before=before,
        after=machine_conditions(),
        images_per_cpu_second=rates,
        median=med,
        ratio=med["new"] / med["old"],
    )
    if a.overlap:
        from common import asl_like_folder
        result["overlap"] = overlap(asl_like_folder(2000), a.overlap_arch, a.size, a.overlap_bs, 12)
    print(json.dumps(result, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
