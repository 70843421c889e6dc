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

With a time budget, `bench` is the scaling experiment at a fixed wall time instead: each
process count trains the same data for the same budget (`fit --time-budget`), and the table
gives the epochs each reached, images/s, the final metric and the scaling efficiency. Both
modes leave their runs in `out/runs/p<N>` and put them side by side (`compare`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .compare import compare_runs, read_run
from .data.images import available_cores
from .data.prepare import build_dataloaders
from .rundir import write_figure, write_file, write_json
from .train import resolve_config

__all__ = ["bench", "train_step_rate", "pipeline_rate", "loader_cost", "loader_wait", "fit_rate",
           "synthetic_folder", "format_table", "plot_results", "format_budget_table", "plot_budget"]


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
                "--out", str(out), "--overwrite", "--quiet", *extra]
    if processes == 1:
        return [sys.executable, *fit_args]
    # torch.distributed.run is torchrun: it starts N ranks on this machine (gloo on CPU).
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *fit_args]


def fit_rate(source: str, processes: int = 1, arch: str = "resnet18", size: int = 64,
             bs: int = 64, epochs: int = 1, lr: float = 2e-3,
             workdir: str | os.PathLike | None = None, extra: Sequence[str] = (),
             timeout: float | None = None) -> dict:
    """Run `easycls fit` in `processes` processes into `workdir/p<processes>`.

    Returns:
        dict with processes, images_per_s (as the run recorded it: training images of every
        process over its training seconds), train_seconds, total_seconds, wall_seconds (the
        launch included), epochs reached, the main metric and the run directory.

    Raises:
        RuntimeError: the run failed or ran past `timeout`; its output is in `p<N>.log`.
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="easycls-bench-"))
    out = workdir / f"p{processes}"
    cmd = _fit_command(processes, source, out, arch, size, bs, epochs, lr, extra)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // processes))}
    t = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"`easycls fit` with {processes} process(es) ran past {timeout:.0f} s "
                           f"and was stopped") from e
    wall = time.perf_counter() - t
    if done.returncode != 0:
        log = write_file(workdir / f"p{processes}.log", done.stdout + done.stderr)
        last = next((x for x in reversed(done.stderr.splitlines()) if x.strip()), "")
        raise RuntimeError(f"`easycls fit` with {processes} process(es) failed (exit "
                           f"{done.returncode}): {last.strip()} (whole output: {log})")
    run = read_run(out)
    m, row = run.metrics, run.row()
    return dict(processes=processes, images_per_s=m["images_per_s"],
                train_seconds=m["train_seconds"], total_seconds=m["total_seconds"],
                wall_seconds=round(wall, 3), epochs=row["epochs"], metric=run.main_metric,
                score=m.get(run.main_metric), accuracy=m.get("accuracy"), run_dir=str(out))


def _efficiency(runs: list[dict]) -> None:
    """Scaling efficiency against one process: images/s / (N x single-process images/s)."""
    single = next((r["images_per_s"] for r in runs if r["processes"] == 1), None)
    for r in runs:
        r["efficiency"] = r["images_per_s"] / (r["processes"] * single) if single else None


def bench(source: str | None = None, arch: str = "resnet18", size: int = 64, bs: int = 64,
          processes: Sequence[int] = (1,), steps: int = 20, epochs: int = 1, lr: float = 2e-3,
          out: str | os.PathLike = "bench", compile: bool = False, device: str | None = None,
          synthetic: int = 256, time_budget: float | None = None, say=print) -> dict:
    """Measure train-step, pipeline and end-to-end throughput; write JSON and a PNG plot.

    With `time_budget` (seconds), the scaling experiment at a fixed wall time instead: each
    process count trains `source` under that budget (`fit`'s `time_budget`), and the table
    gives epochs reached, images/s, the final metric and the scaling efficiency.

    Args:
        source: anything `fit` accepts; None generates a synthetic JPEG folder of
            `synthetic` images in `out/data`.
        processes: process counts for the end-to-end runs (DDP when > 1).

    Example:
        >>> result = bench(None, arch="resnet18", size=32, bs=16, processes=(1, 2))
        >>> result["scaling"][0]["efficiency"]
        >>> bench("digits", processes=(1, 2), time_budget=60)["scaling"][1]["epochs"]
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = source or str(synthetic_folder(out / "data", n=synthetic))
    dev = _device(device)
    result: dict = dict(arch=arch, size=size, bs=bs, device=_device_name(dev), source=str(source),
                        cores=available_cores(), loadavg=[round(x, 2) for x in os.getloadavg()])
    if time_budget:
        return _at_budget(result, processes, time_budget, lr, out, say)
    say(f"bench: {arch} {size}px bs {bs} on {result['device']}, source {source}")
    result["train_step"] = train_step_rate(arch, size, bs, steps, device=device, compile=compile)
    cfg = resolve_config(str(source), size=size, bs=bs, quiet=True, pretrained=False)
    dls = build_dataloaders(cfg, device=dev)
    cost = loader_cost(dls.train)
    result["pipeline"] = cost["images_per_s"]
    result["loader_per_core"] = cost["images_per_cpu_second"]
    result["cores_needed"] = result["train_step"] / result["loader_per_core"]
    result["loader_wait"] = loader_wait(dls, arch, steps=min(steps, 8), n_classes=dls.c)
    runs = [fit_rate(source, p, arch, size, bs, epochs, lr, workdir=out / "runs")
            for p in processes]
    _efficiency(runs)
    result["end_to_end"] = runs[0]["images_per_s"] if runs else None
    result["scaling"] = runs
    _finish(result, out, plot_results, format_table, say)
    return result


def _at_budget(result: dict, processes: Sequence[int], seconds: float, lr: float, out: Path,
               say) -> dict:
    """The fixed-wall-time scaling experiment: every process count gets `seconds`."""
    result.update(time_budget_seconds=seconds)
    say(f"bench: {result['arch']} {result['size']}px bs {result['bs']} on {result['device']}, "
        f"source {result['source']}: {seconds:g} s for each of {', '.join(map(str, processes))}"
        " process(es)")
    runs = []
    for p in processes:
        runs.append(fit_rate(result["source"], p, result["arch"], result["size"], result["bs"],
                             1, lr, workdir=out / "runs", extra=["--time-budget", f"{seconds:g}s"],
                             timeout=2 * seconds + 600))
        runs[-1]["within_budget"] = runs[-1]["total_seconds"] <= seconds
        say(f"  {p} process(es): {runs[-1]['epochs']} epochs, {runs[-1]['wall_seconds']:.1f} s")
    _efficiency(runs)
    result["scaling"] = runs
    _finish(result, out, plot_budget, format_budget_table, say)
    return result


def _finish(result: dict, out: Path, plot, table, say) -> None:
    """bench.json, bench.png, and the runs side by side (compare.md, .csv, .png)."""
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]  # what shared the machine
    write_json(out / "bench.json", result)
    plot(result, out / "bench.png")
    compare_runs([r["run_dir"] for r in result["scaling"]], out=out)
    say(table(result))


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
    write_figure(fig, path)
    plt.close(fig)
    return Path(path)


def format_budget_table(result: dict) -> str:
    """The fixed-wall-time experiment as a plain-text table, one row per process count."""
    from .report import format_table as text_table
    metric = result["scaling"][0]["metric"] if result["scaling"] else "accuracy"
    rows = [dict(processes=r["processes"], epochs=r["epochs"],
                 **{"images/s": f"{r['images_per_s']:.1f}",
                    "efficiency": "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}",
                    metric: r["score"], "train s": f"{r['train_seconds']:.1f}",
                    "total s": f"{r['total_seconds']:.1f}",
                    "within budget": "yes" if r["within_budget"] else "NO"})
            for r in result["scaling"]]
    head = (f"{result['time_budget_seconds']:g} s of wall time each: {result['arch']} "
            f"{result['size']}px bs {result['bs']} per process on {result['device']}")
    return head + "\n" + text_table(rows, list(rows[0]) if rows else [])


def plot_budget(result: dict, path: str | os.PathLike) -> Path:
    """Per process count: epochs reached, images/s (with the efficiency) and the final metric."""
    from .report import matplotlib, plt
    runs = result["scaling"]
    labels = [str(r["processes"]) for r in runs]
    metric = runs[0]["metric"] if runs else "accuracy"
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=80)
    panels = (("epochs", "epochs reached"), ("images_per_s", "images / s"), ("score", metric))
    for ax, (key, title) in zip(axes, panels):
        bars = ax.bar(labels, [r[key] or 0 for r in runs], color="C2" if key == "score" else "C0")
        ax.set(xlabel="processes", title=title)
        if key == "epochs":
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if key == "images_per_s":
            notes = ["" if r["efficiency"] is None else f"{r['efficiency']:.2f}" for r in runs]
            ax.bar_label(bars, notes, fontsize=8)
    fig.suptitle(f"{result['time_budget_seconds']:g} s each: {result['arch']} {result['size']}px "
                 f"bs {result['bs']} - {result['device']} (bar labels: scaling efficiency)",
                 fontsize=10)
    fig.tight_layout()
    write_figure(fig, path)
    plt.close(fig)
    return Path(path)
