"""The measurements behind `benchmarks/gpu_check.sh`; one JSON file out.

Sections (each records its own status, so one failure does not hide the others):

- `train_step`: synthetic forward + backward + AdamW step, resnet50 @ 224 px, bs 256, bf16
  autocast, channels_last; with and without `torch.compile`;
- `data`: generated JPEGs through easycls's real data path: the loader alone (uint8 cache
  and `FeedDL`; and the compact JPEG store decoded by nvJPEG) and end to end (a
  Learner with bf16 and channels_last training on it; `LoaderTiming` gives the loader
  wait per step);
- `fit`: a 1-process `accelerate launch` of `easycls.fit` (this file's `probe` command)
  that checks bf16, channels_last, no SyncBatchNorm, the run directory, and
  `easycls.load` + predict on the same device.

`--dry` runs everything small on the CPU; CUDA-only parts are skipped with a line that
says so. Usage: see `benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

GPU = dict(arch="resnet50", size=224, bs=256, steps=30, warmup=5, n_images=4096, side=288,
           epochs=3, fit_arch="resnet18", fit_size=64, fit_bs=64)
DRY = dict(arch="resnet18", size=32, bs=8, steps=2, warmup=1, n_images=64, side=48,
           epochs=1, fit_arch="resnet18", fit_size=32, fit_bs=8)
RUN_FILES = ("model.safetensors", "model.json", "metrics.json", "history.csv", "config.json")


def say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def section(result: dict, name: str, fn, *args) -> None:
    """Run one part, record its figures or its error, never stop the whole check."""
    say(f"{name} ...")
    t = time.perf_counter()
    try:
        result[name] = dict(status="ok", **fn(*args))
    except Exception as e:  # noqa: BLE001  reported in the JSON, the next part still runs
        traceback.print_exc()
        result[name] = dict(status="failed", error=f"{type(e).__name__}: {e}")
    result[name]["seconds"] = round(time.perf_counter() - t, 1)
    say(f"{name}: {result[name]['status']} in {result[name]['seconds']} s")


def skipped(why: str) -> dict:
    say(f"SKIPPED: {why}")
    return dict(status="skipped", why=why)


# ---------------------------------------------------------------- train step


def train_step(p: dict, cuda: bool) -> dict:
    from easycls.bench import train_step_rate
    device = "cuda" if cuda else "cpu"
    out = dict(arch=p["arch"], size=p["size"], bs=p["bs"], precision="bf16" if cuda else "fp32",
               channels_last=cuda)
    out["images_per_s"] = train_step_rate(p["arch"], p["size"], p["bs"], p["steps"], p["warmup"],
                                          device=device)
    if cuda:
        out["compiled_images_per_s"] = train_step_rate(p["arch"], p["size"], p["bs"], p["steps"],
                                                       p["warmup"], device=device, compile=True)
    else:
        out["compiled"] = skipped("torch.compile: CUDA only here (its first build takes minutes "
                                  "on a CPU)")
    return out


# ---------------------------------------------------------------- real data path


def jpeg_folder(root: Path, n: int, side: int) -> Path:
    from common import asl_like_folder
    return asl_like_folder(n, side, root=root)


def loaders(source: Path, size: int, bs: int):
    """The DataLoaders `fit` builds for `source` (pretrained=False: data-derived statistics)."""
    from easycls.data.prepare import build_dataloaders
    from easycls.train import resolve_config
    return build_dataloaders(resolve_config(str(source), size=size, bs=bs, pretrained=False))


def loader_rate(dl, passes: int = 2) -> dict:
    """Images/s and images per process-CPU-second of iterating `dl` (after a warm-up pass)."""
    from easycls.bench import loader_cost
    return dict(loader_cost(dl, passes), batch_level=dl.batch_level, loader=type(dl).__name__)


def store_loader(dl, size: int, work: Path):
    """The same training split read from the compact JPEG store (nvJPEG on CUDA)."""
    from easycls.data.loaders import Pixels
    from easycls.data.storage import open_pixels
    ds = dl.dataset
    refs = list(ds.pixels.refs)
    store = open_pixels(refs, ds.pixels.size, "jpeg", root=work / "store").pixels
    store_ds = type(ds)(Pixels(refs, ds.pixels.size, store), ds.targets, False, 0)
    return dl.new(store_ds)  # fastai's way to a loader with the same transforms (as test_dl)


def end_to_end(dls, arch: str, epochs: int, cuda: bool) -> dict:
    import timm
    from fastai.callback.fp16 import MixedPrecision
    from fastai.callback.progress import ProgressCallback  # noqa: F401  (Learner.no_bar)
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from easycls.callbacks import ChannelsLastAuto, LoaderTiming, PlainTensors

    model = timm.create_model(
        arch, pretrained=False, num_classes=len(set(dls.train.dataset.targets.tolist()))
    )
    timing = LoaderTiming(skip=2, sync=cuda)
    cbs = [PlainTensors(), ChannelsLastAuto(), timing] + ([MixedPrecision("bf16")] if cuda else [])
    learn = Learner(dls, model.to(dls.device), loss_func=CrossEntropyLossFlat(), cbs=cbs)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, 1e-3)
    return dict(arch=arch, epochs=epochs, wall_seconds=round(time.perf_counter() - t, 2),
                **timing.summary())


def data_path(p: dict, cuda: bool, work: Path) -> dict:
    folder = jpeg_folder(work / "jpegs", p["n_images"], p["side"])
    dls = loaders(folder, p["size"], p["bs"])
    out = dict(images=p["n_images"], side=p["side"], size=p["size"], bs=p["bs"],
               train_images=len(dls.train.dataset), device=str(dls.device))
    out["cache_loader"] = loader_rate(dls.train)
    out["store_loader"] = loader_rate(store_loader(dls.train, p["size"], work))
    out["store_loader"]["decoder"] = "nvjpeg (cuda)" if cuda else "libjpeg-turbo (cpu)"
    out["end_to_end"] = end_to_end(dls, p["arch"], p["epochs"], cuda)
    return out


# ---------------------------------------------------------------- accelerate launch + fit


def fit_launch(p: dict, cuda: bool, work: Path) -> dict:
    from easycls.bench import synthetic_folder
    source = synthetic_folder(work / "fitdata", n=64 if not cuda else 512, n_classes=4, side=80)
    run, probe = work / "fit-run", work / "probe.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
           "--num_machines", "1", "--dynamo_backend", "no", *([] if cuda else ["--cpu"]),
           str(Path(__file__)), "probe", "--source", str(source), "--run", str(run),
           "--json", str(probe), "--arch", p["fit_arch"], "--size", str(p["fit_size"]),
           "--bs", str(p["fit_bs"])]
    say(" ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    if done.returncode != 0:
        raise RuntimeError("accelerate launch failed (exit "
                           f"{done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(probe.read_text())
    want = dict(precision="bf16" if cuda else "no", channels_last=True if cuda else None,
                sync_batchnorm=False, device="cuda" if cuda else "cpu",
                predict_device="cuda" if cuda else "cpu", run_files_missing=[])
    out["failed_checks"] = [k for k, v in want.items() if v is not None and out.get(k) != v]
    if out["failed_checks"]:
        raise AssertionError(f"checks failed: {out['failed_checks']} in {out}")
    return out


def probe(a) -> None:
    """Inside `accelerate launch`: train with `easycls.fit`, then look at what it did."""
    import easycls
    learn = easycls.fit(a.source, arch=a.arch, size=a.size, bs=a.bs, epochs=1, lr=1e-3,
                        pretrained=False, out=a.run, quiet=True)
    mp = [cb for cb in learn.cbs if type(cb).__name__ == "MixedPrecision"]
    conv = next(m.weight for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    predictor = easycls.load(a.run)
    image = next(p for p in sorted(Path(a.source).rglob("*.jpg")))
    label, prob = predictor.predict(str(image))
    out = dict(
        precision=str(mp[0].amp_mode.value) if mp else "no",
        channels_last=conv.is_contiguous(memory_format=torch.channels_last),
        sync_batchnorm=any(isinstance(m, torch.nn.SyncBatchNorm) for m in learn.model.modules()),
        device=next(learn.model.parameters()).device.type,
        loader=type(learn.dls.train).__name__,
        batch_level=bool(getattr(learn.dls.train, "batch_level", False)),
        run_files_missing=[f for f in RUN_FILES if not (Path(a.run) / f).exists()],
        predict_device=next(predictor.model.parameters()).device.type,
        predicted=label,
        probability=float(prob),
        accuracy=learn.easycls.metrics.get("accuracy"),
        env_mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION"),
    )
    Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


# ---------------------------------------------------------------- main


def environment(cuda: bool, dry: bool) -> dict:
    import fastai
    import torchvision
    return dict(
        dry=dry,
        cuda=cuda,
        device=torch.cuda.get_device_name() if cuda else "cpu",
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        fastai=fastai.__version__,
        cores=len(os.sched_getaffinity(0)),
        loadavg=[round(x, 2) for x in os.getloadavg()],
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


def check(a) -> int:
    cuda = torch.cuda.is_available() and not a.dry
    if not cuda and not a.dry:
        say("no CUDA device: run with --dry for the CPU check")
        return 2
    p = DRY if a.dry else GPU
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EASYCLS_CACHE", str(work / "cache"))
    result = dict(environment=environment(cuda, a.dry), settings=p)
    if not cuda:
        say("SKIPPED (no CUDA in --dry): bf16, torch.compile, pinned copies, nvJPEG; the CPU runs "
            "the same code")
    section(result, "train_step", train_step, p, cuda)
    section(result, "data", data_path, p, cuda, work)
    section(result, "fit", fit_launch, p, cuda, work)
    result["ok"] = all(result[k]["status"] == "ok" for k in ("train_step", "data", "fit"))
    result["environment"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(a.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    say(f"wrote {a.out}: {'all ok' if result['ok'] else 'SOME PARTS FAILED'}")
    return 0 if result["ok"] else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("--dry", action="store_true")
    c.add_argument("--out", default="gpu_check.json")
    c.add_argument("--work", required=True)
    r = sub.add_parser("probe")
    for name in ("--source", "--run", "--json", "--arch"):
        r.add_argument(name, required=True)
    r.add_argument("--size", type=int, required=True)
    r.add_argument("--bs", type=int, required=True)
    a = p.parse_args()
    if a.cmd == "probe":
        probe(a)
        return 0
    return check(a)


if __name__ == "__main__":
    sys.exit(main())
