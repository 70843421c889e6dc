"""Throughput and scaling benchmark: `easycls bench`.

Three figures, in images per second, for one arch / size / batch size:

- **train_step**: forward + backward + optimizer step on synthetic in-memory batches
  (channels_last and bf16 autocast on CUDA; optionally `torch.compile`);
- **pipeline**: easycls's input pipeline alone (cache or decode, batch augmentation,
  normalization; no model), measured on the pass after the first; also per CPU core
  (images per process-CPU-second, all threads), and from that the CPU cores needed to
  feed the measured train step;
- **loader wait**: a few real training steps of the model on the pipeline, with
  `LoaderTiming`: the time each step waited for its batch over the step's time;
- **end_to_end**: `easycls fit` itself, as a subprocess, training images x epochs over
  the training wall time (validation included). With `processes=(1, 2, 4)` each count runs
  the real DDP path under `torch.distributed.run`, and the scaling efficiency is
  throughput / (N x single-process throughput).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .data.images import available_cores
from .data.prepare import build_dataloaders
from .train import resolve_config

__all__ = ["bench", "train_step_rate", "pipeline_rate", "loader_cost", "loader_wait", "fit_rate",
           "synthetic_folder", "format_table", "plot_results"]


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def train_step_rate(arch: str = "resnet18", size: int = 64, bs: int = 64, steps: int = 20,
                    warmup: int = 3, device: str | None = None, compile: bool = False,
                    n_classes: int = 10) -> float:
    """Images/s of the training step alone (synthetic data already on the device).

    Example:
        >>> train_step_rate("resnet18", size=32, bs=16, steps=3)
    """
    import timm
    dev = _device(device)
    cuda = dev.type == "cuda"
    model = timm.create_model(arch, pretrained=False, num_classes=n_classes).to(dev)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, n_classes, (bs,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(step_model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    return _rate(step, steps, warmup, bs, cuda)


def _rate(step, steps: int, warmup: int, per_step: int, cuda: bool) -> float:
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * per_step / (time.perf_counter() - t)


def synthetic_folder(root: str | os.PathLike, n: int = 256, n_classes: int = 4,
                     side: int = 96) -> Path:
    """A class-folder JPEG dataset of noisy colour-coded images (learnable), made once.

    Example:
        >>> synthetic_folder("/tmp/syn", n=64)
    """
    from PIL import Image
    folder = Path(root) / f"synthetic-{n}-{n_classes}-{side}"
    if (folder / "DONE").exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % n_classes
        hue = np.array([(c * 97) % 256, (c * 57 + 80) % 256, (c * 31 + 160) % 256])
        px = np.clip(hue + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(folder / f"class{c}" / f"{i:05d}.jpg", quality=90)
    (folder / "DONE").write_text(str(n))
    return folder


def pipeline_rate(dl, passes: int = 1) -> float:
    """Images/s of iterating `dl` (any loader of (x, y) batches), after one warm-up pass."""
    for _ in dl:  # first pass: workers start, caches and page cache warm up
        pass
    n, t = 0, time.perf_counter()
    for _ in range(passes):
        for xb, _yb in dl:
            n += len(xb)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def loader_cost(dl, passes: int = 1) -> dict:
    """Images/s and images per process-CPU-second (all threads) of iterating `dl` after a
    warm-up pass: the CPU a loader needs per image, whatever else shares the machine."""
    for _ in dl:
        pass
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(passes):
        for xb, _yb in dl:
            n += len(xb)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return dict(images_per_s=n / (time.perf_counter() - wall),
                images_per_cpu_second=n / max(time.process_time() - cpu, 1e-9))


def loader_wait(dls, arch: str, steps: int = 8, n_classes: int = 10) -> dict:
    """Loader wait per training step over the step time (`LoaderTiming`), training `arch`
    on `dls` for `steps` batches as `fit` does (channels_last where it pays; bf16 on CUDA)."""
    import timm
    from fastai.callback.core import Callback, CancelFitException
    from fastai.callback.progress import ProgressCallback  # noqa: F401  (Learner.no_bar)
    from fastai.learner import Learner

    from .callbacks import ChannelsLastAuto, LoaderTiming, PlainTensors

    class _Stop(Callback):
        order = 100

        def after_batch(self):
            if self.training and self.iter + 1 >= steps:
                raise CancelFitException()

    cuda = dls.device is not None and dls.device.type == "cuda"
    model = timm.create_model(arch, pretrained=False, num_classes=n_classes).to(dls.device)
    timing = LoaderTiming(skip=1)
    cbs = [PlainTensors(), ChannelsLastAuto(), timing, _Stop()]
    if cuda:
        from fastai.callback.fp16 import MixedPrecision
        cbs.append(MixedPrecision("bf16"))
    multi = np.asarray(dls.train.dataset.targets).ndim == 2
    loss = torch.nn.BCEWithLogitsLoss() if multi else torch.nn.CrossEntropyLoss()
    learn = Learner(dls, model, loss_func=loss, cbs=cbs)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    return timing.summary()


def _fit_command(processes: int, source: str, out: Path, arch: str, size: int, bs: int,
                 epochs: int, lr: float, extra: Sequence[str]) -> list[str]:
    fit_args = ["-m", "easycls", "fit", str(source), "--arch", arch, "--size", str(size),
                "--bs", str(bs), "--epochs", str(epochs), "--lr", str(lr), "--no-pretrained",
                "--out", str(out), "--quiet", *extra]
    if processes == 1:
        return [sys.executable, *fit_args]
    # torch.distributed.run is torchrun: it starts N ranks on this machine (gloo on CPU).
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *fit_args]


def fit_rate(source: str, n_train: int, processes: int = 1, arch: str = "resnet18",
             size: int = 64, bs: int = 64, epochs: int = 1, lr: float = 2e-3,
             workdir: str | os.PathLike | None = None, extra: Sequence[str] = (),
             timeout: float | None = None) -> dict:
    """Run `easycls fit` in `processes` processes; `n_train` x epochs / its training seconds.

    Returns:
        dict with processes, images_per_s, train_seconds, wall_seconds and accuracy.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="easycls-bench-"))
    out = workdir / f"fit-p{processes}-{time.time_ns()}"
    cmd = _fit_command(processes, source, out, arch, size, bs, epochs, lr, extra)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // processes))}
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return dict(processes=processes, images_per_s=n_train * epochs / metrics["train_seconds"],
                train_seconds=metrics["train_seconds"], wall_seconds=round(wall, 3),
                accuracy=metrics.get("accuracy"))


def bench(source: str | None = None, arch: str = "resnet18", size: int = 64, bs: int = 64,
          processes: Sequence[int] = (1,), steps: int = 20, epochs: int = 1, lr: float = 2e-3,
          out: str | os.PathLike = "bench", compile: bool = False, device: str | None = None,
          synthetic: int = 256, say=print) -> dict:
    """Measure train-step, pipeline and end-to-end throughput; write JSON and a PNG plot.

    Args:
        source: anything `fit` accepts; None generates a synthetic JPEG folder of
            `synthetic` images in `out/data`.
        processes: process counts for the end-to-end runs (DDP when > 1).

    Example:
        >>> result = bench(None, arch="resnet18", size=32, bs=16, processes=(1, 2))
        >>> result["scaling"][0]["efficiency"]
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = source or str(synthetic_folder(out / "data", n=synthetic))
    dev = _device(device)
    result: dict = dict(arch=arch, size=size, bs=bs, device=_device_name(dev), source=str(source),
                        cores=available_cores(), loadavg=[round(x, 2) for x in os.getloadavg()])
    say(f"bench: {arch} {size}px bs {bs} on {result['device']}, source {source}")
    result["train_step"] = train_step_rate(arch, size, bs, steps, device=device, compile=compile)
    cfg = resolve_config(str(source), size=size, bs=bs, quiet=True, pretrained=False)
    dls = build_dataloaders(cfg, device=dev)
    train_dl = dls.train
    cost = loader_cost(train_dl)
    result["pipeline"] = cost["images_per_s"]
    result["loader_per_core"] = cost["images_per_cpu_second"]
    result["cores_needed"] = result["train_step"] / result["loader_per_core"]
    result["loader_wait"] = loader_wait(dls, arch, steps=min(steps, 8), n_classes=dls.c)
    n_train = len(train_dl.dataset)
    runs = [fit_rate(source, n_train, p, arch, size, bs, epochs, lr, workdir=out / "runs")
            for p in processes]
    single = next((r["images_per_s"] for r in runs if r["processes"] == 1), None)
    for r in runs:
        r["efficiency"] = r["images_per_s"] / (r["processes"] * single) if single else None
    result["end_to_end"] = runs[0]["images_per_s"] if runs else None
    result["scaling"] = runs
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_results(result, out / "bench.png")
    say(format_table(result))
    return result


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({available_cores()} cores)"


def format_table(result: dict) -> str:
    """The result as a plain-text table."""
    lines = [f"{'measure':<28}{'images/s':>12}{'efficiency':>12}",
             f"{'train step (synthetic)':<28}{result['train_step']:>12.1f}",
             f"{'input pipeline':<28}{result['pipeline']:>12.1f}"]
    if result.get("loader_per_core"):
        lines.append(f"{'input pipeline, per core':<28}{result['loader_per_core']:>12.1f}")
    for r in result["scaling"]:
        eff = f"{r['efficiency']:.2f}" if r.get("efficiency") is not None else "-"
        lines.append(f"{'end to end, ' + str(r['processes']) + ' process(es)':<28}"
                     f"{r['images_per_s']:>12.1f}{eff:>12}")
    wait = (result.get("loader_wait") or {}).get("wait_fraction")
    if wait is not None:
        lines.append(f"loader wait per step: {100 * wait:.1f} % of the step time "
                     f"({result['loader_wait']['steps']} steps of {result['arch']})")
    if result.get("cores_needed") is not None:
        lines.append(f"CPU cores needed to feed the train step: {result['cores_needed']:.2f}")
    return "\n".join(lines)


def plot_results(result: dict, path: str | os.PathLike) -> Path:
    """Bar chart of the three throughputs, end to end per process count."""
    from .report import plt
    labels = ["train step", "pipeline"] + [f"e2e x{r['processes']}" for r in result["scaling"]]
    values = [result["train_step"], result["pipeline"]]
    values += [r["images_per_s"] for r in result["scaling"]]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(labels, values, color=["C0", "C1"] + ["C2"] * len(result["scaling"]))
    ax.set_ylabel("images / s")
    ax.set_title(f"{result['arch']} {result['size']}px bs {result['bs']} - {result['device']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
