"""Training data path at ImageNet-like sizes: originals vs compact JPEG store vs uint8 cache.

Generates N photo-like JPEGs of about 400x350 px once (jittered random crops of the two
photos scikit-learn ships, `load_sample_images`: real photo statistics, not flat colours),
then builds the uint8 cache and the compact store at the training store size (255 px for
224 px training with augmentation) into a temporary cache folder, and reports:

- build time (wall and process CPU seconds) and bytes per image of each;
- images per CPU-second of one item fetch (what a DataLoader worker does per item):
  originals `load_resized`, `store[i]` (read + torchvision's `decode_jpeg`), the stored
  bytes alone decoded by Pillow and by torchvision, and a copy of one cache row;
- images per CPU-second of the whole loader (fastai `TfmdDL`, 0 workers, batch 64, with
  augmentation) over each source.

CPU time is process CPU time (all threads), because the machine is shared. Rounds alternate.

    python benchmarks/store_speed.py --n 20000 --size 224
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine_conditions  # noqa: E402


def photos(n: int, root: Path) -> list[str]:
    """N JPEGs (quality 90) of about 400x350 px: random crops of two real photos, jittered
    in position, scale, flip and colour. Generated once."""
    from sklearn.datasets import load_sample_images
    folder = root / f"photos-{n}"
    if not (folder / "DONE").exists():
        folder.mkdir(parents=True, exist_ok=True)
        sources = [Image.fromarray(a) for a in load_sample_images().images]
        rng = np.random.default_rng(0)
        for i in range(n):
            _photo(sources[i % 2], rng).save(folder / f"{i:06d}.jpg", quality=90)
        (folder / "DONE").write_text(str(n))
    return [str(folder / f"{i:06d}.jpg") for i in range(n)]


def _photo(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.integers(300, 480)), int(rng.integers(260, 420))
    x, y = int(rng.integers(0, src.width - w)), int(rng.integers(0, src.height - h))
    out = src.crop((x, y, x + w, y + h)).resize((int(rng.integers(380, 420)),
                                                  int(rng.integers(330, 370))))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    gain = rng.uniform(0.85, 1.15, 3)
    return Image.fromarray(np.clip(np.asarray(out) * gain, 0, 255).astype(np.uint8))


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def builds(refs, store_size, root):
    from easycls.data.storage import open_pixels
    out = {}
    made = {}
    for name, kind in (("store", "jpeg"), ("cache", "cache")):
        wall, cpu = _timed(lambda k=kind, n=name: made.__setitem__(
            n, open_pixels(refs, store_size, k, root=root)))
        out[name] = dict(build_wall_s=round(wall, 1), build_cpu_s=round(cpu, 1))
    out["store"]["bytes_per_image"] = round(made["store"].pixels.nbytes_on_disk / len(refs))
    out["cache"]["bytes_per_image"] = round(os.path.getsize(made["cache"].path) / len(refs))
    return out, made["store"].pixels, made["cache"].pixels


def item_rates(refs, store, cache, store_size, n_items, rounds):
    """Images per CPU-second of one item fetch, one thread."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from easycls.data.images import load_resized
    rng = np.random.default_rng(1)
    idx = rng.choice(len(refs), size=min(n_items, len(refs)), replace=False)
    blobs = store.read(idx)

    def tv():
        for b in blobs:
            decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8),
                        mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()

    runs = {
        "originals": lambda: [load_resized(refs[i], store_size) for i in idx],
        "store": lambda: [store[int(i)] for i in idx],
        "store_bytes_decoded_by_pil": lambda: [
            np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs],
        "store_bytes_decoded_by_torchvision": tv,
        "cache": lambda: [np.array(cache[int(i)]) for i in idx],
    }
    cpu = alternate({k: (lambda f=f: _timed(f)[1]) for k, f in runs.items()}, rounds)
    return {k: round(len(idx) / min(v), 1) for k, v in cpu.items()}


def loader_rates(refs, store, cache, size, store_size, n_batches, rounds):
    """Images per CPU-second of fastai's loader (0 workers, bs 64, augmented) per source."""
    from easycls.data.loaders import ImageDataset, Pixels, make_dataloaders
    targets = np.zeros(len(refs), np.int64)
    bs = 64

    def run(array):
        ds = ImageDataset(Pixels(refs, store_size, array), targets, False, 0)
        dls = make_dataloaders(ds, ds, size=size, bs=bs, mean=[0.5] * 3, std=[0.25] * 3)
        it = iter(dls.train)

        def go():
            for _ in range(n_batches):
                next(it)
        return _timed(go)[1]

    cpu = alternate({"originals": lambda: run(None), "store": lambda: run(store),
                     "cache": lambda: run(cache)}, rounds)
    return {k: round(n_batches * bs / min(v), 1) for k, v in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--items", type=int, default=1000, help="items per item-fetch round")
    ap.add_argument("--batches", type=int, default=8, help="batches per loader round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=os.environ.get(
        "EASYCLS_BENCH_DATA", Path.home() / ".cache" / "easycls-bench"))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from easycls.data.loaders import train_store_size
    store_size = train_store_size(args.size, True)
    t = time.perf_counter()
    refs = photos(args.n, Path(args.data))
    src_bytes = sum(os.path.getsize(r) for r in refs) / len(refs)
    print(f"{len(refs)} photos ready in {time.perf_counter() - t:.0f} s, "
          f"{src_bytes / 1e3:.1f} KB each", flush=True)
    with tempfile.TemporaryDirectory(dir=args.data) as root:
        os.environ["EASYCLS_CACHE_MAX_GB"] = "1000"
        built, store, cache = builds(refs, store_size, Path(root))
        print(json.dumps(built), flush=True)
        items = item_rates(refs, store, cache, store_size, args.items, args.rounds)
        print(json.dumps(items), flush=True)
        loader = loader_rates(refs, store, cache, args.size, store_size, args.batches,
                              args.rounds)
    result = dict(n=args.n, size=args.size, store_size=store_size,
                  original_bytes_per_image=round(src_bytes), build=built,
                  item_images_per_cpu_s=items, loader_images_per_cpu_s=loader,
                  store_vs_originals_item=round(items["store"] / items["originals"], 2),
                  store_vs_originals_loader=round(loader["store"] / loader["originals"], 2),
                  **machine_conditions())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
