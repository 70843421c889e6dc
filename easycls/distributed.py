"""The only module that knows about processes (and the only one that imports accelerate).

`Session` tells the rest of the code where to run; callers never test ranks themselves:
they ask for `session.main_only(callbacks)`, `session.on_main(fn)`,
`session.any_rank(flag)` or `session.broadcast(value)`. What only easycls needs stays here:
the launch facts, CPU/gloo-safe loader shards, the gloo side group for per-batch flags and
the exit that leaves the process group cleanly; the collectives are Accelerate's.

Launchers (`accelerate launch --multi_gpu --num_processes N -m easycls fit ...`,
`torchrun --nproc_per_node N -m easycls fit ...`, SLURM through either) set `WORLD_SIZE`
and `RANK`; an `Accelerator` then joins the process group: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from accelerate.utils import broadcast_object_list, gather_object
from fastai.callback.core import Callback
from fastai.callback.schedule import LRFinder
from fastai.data.load import DataLoader
from fastai.distributed import DistributedDL, DistributedTrainer
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError
from .job import environ_set, local_world_size, world_size

__all__ = ["Session", "session", "TrainShardsDL", "ValidShardsDL", "DataParallelTrainer",
           "resolve_precision", "cpu_has_native_bf16", "PrecisionError", "process_group_timeout",
           "ProcessLocal"]

# Ranks wait at barriers while others build caches or stores, which can take hours at
# ImageNet size; torch's default (10 to 30 minutes) would abort the job instead.
_DEFAULT_TIMEOUT_S = 2 * 3600.0


def process_group_timeout(seconds: float | None = None) -> float:
    """Seconds a collective may wait: `seconds`, else `$EASYCLS_DIST_TIMEOUT`, else two hours."""
    return float(seconds or os.environ.get("EASYCLS_DIST_TIMEOUT") or _DEFAULT_TIMEOUT_S)


def _broadcast_list(values: list[int], src: int, world: int) -> list[int]:
    # fastai's DistributedDL._broadcast always calls .cuda(): gloo needs CPU tensors.
    if world == 1 or not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.long)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src)
    return t.cpu().tolist()


class ValidShardsDL(DistributedDL):
    """fastai's padded shards (pad, then unpad in `to_detach`), broadcast on CPU or CUDA.

    Gathered predictions come back once each, in order: metrics equal a single-process run.
    """

    def _broadcast(self, t, rank):
        return _broadcast_list(t, rank, self.world_size)


class TrainShardsDL(DistributedDL):
    """Training shards: one shuffled order shared by all ranks, rank r takes every
    `world_size`-th index from position r, truncated so no sample is repeated.

    `skip` batches are left out of the next pass (resuming inside an epoch); the order
    itself follows the wrapped loader's `rng`, which checkpoints save and restore.
    """

    skip: int = 0

    def _broadcast(self, t, rank):
        return _broadcast_list(t, rank, self.world_size)

    def __len__(self) -> int:
        per_rank = self.dl.n // self.world_size
        return per_rank // self.bs if self.drop_last else math.ceil(per_rank / self.bs)

    def get_idxs(self):
        idxs = self._broadcast(list(self.dl.get_idxs()), 0)
        n = len(idxs) // self.world_size * self.world_size  # the dropped tail is < world_size items
        self.n = self.n_padded = n
        mine = idxs[self.rank:n:self.world_size]
        skip, self.skip = self.skip, 0
        return mine[skip * self.bs:]

    def to_detach(self, b, cpu=True, gather=True):
        return self._to_detach(b, cpu, gather)  # nothing padded, nothing to cut

    @property
    def n_inp(self) -> int:
        # Ask the wrapped loader, which works it out (one augmented item, drawing random
        # numbers) exactly as it would unwrapped: a single process trains number for number
        # as it would without this class.
        return self.dl.n_inp


class DataParallelTrainer(DistributedTrainer):
    """fastai's `DistributedTrainer` with the process group's own `Accelerator`, CPU/gloo-safe
    shards, and no DDP when there is one process (then it only shards the training loader,
    which gives checkpoints a resumable data order)."""

    order = 11

    def __init__(self, accelerator=None, rank: int = 0, world: int = 1, sync_bn: bool = False):
        self.accelerator, self.rank, self.world, self.sync_bn = accelerator, rank, world, sync_bn

    def before_fit(self):
        # lr_find runs inside `Session.alone()`, each process on its own: no DDP, no shards.
        self.active = not any(isinstance(cb, LRFinder) for cb in self.learn.cbs)
        if not self.active:
            return
        if self.world > 1:
            model = (
                torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                if self.sync_bn
                else self.model
            )
            self.learn.model = self.accelerator.prepare(model)
        self.old_dls = list(self.dls)
        self.learn.dls.loaders = [self._wrap_dl(dl) for dl in self.dls]

    def _wrap_dl(self, dl):
        # Outside a fit, and for what is not a fastai loader (show_results passes a list of
        # batches), leave it alone: the trainer concerns training and gathered validation only.
        if not getattr(self, "active", False) or isinstance(dl, DistributedDL):
            return dl
        if not isinstance(dl, DataLoader):
            return dl
        if dl.shuffle:
            return TrainShardsDL(dl, self.rank, self.world, device=dl.device)
        return ValidShardsDL(dl, self.rank, self.world, device=dl.device) if self.world > 1 else dl

    def after_fit(self):
        if not getattr(self, "active", False):
            return
        if isinstance(self.learn.model, DistributedDataParallel):
            self.learn.model = self.learn.model.module
        self.learn.dls.loaders = self.old_dls
        # Nothing of the fit stays behind: `learn.export()` pickles the callbacks.
        self.active, self.old_dls = False, None


@contextmanager
def one_process() -> Iterator[None]:
    """Inside, fastai sees one process: `maybe_gather` and `rank_distrib` read WORLD_SIZE
    and RANK, and would otherwise wait for ranks that have moved on (or never come)."""
    with environ_set(WORLD_SIZE="1", RANK="0"):
        yield


class ProcessLocal(Callback):
    """While `learn` runs anything (get_preds, predict, tta, a fit), it runs in
    :func:`one_process`. Added by `Session.release` once a multi-process fit is over."""

    order = -100  # before every other callback looks at the process count
    depth = 0  # fits inside fits (a Learner context around get_preds) restore once

    def before_fit(self):
        if self.depth == 0:
            self.inside = ExitStack()
            self.inside.enter_context(one_process())
        self.depth += 1

    def after_fit(self):
        self.depth = max(0, self.depth - 1)
        if self.depth == 0 and hasattr(self, "inside"):
            self.inside.close()


class PrecisionError(UserError, ValueError):
    """A mixed-precision mode this device cannot run."""


# From this input size a CPU with native bf16 trains in bf16 by default: a resnet18 step
# takes 0.68x float32's time at 64 px and 0.55x at 128, but about the same at 32 px, where
# oneDNN's bf16 kernels also gave non-finite gradients (the last stage's maps are 1x1 at 16
# px). See docs/performance.md, "bf16 on a CPU with native bf16".
CPU_BF16_FROM_SIZE = 64


def resolve_precision(requested: str | None, device: torch.device, size: int | None = None
                      ) -> str:
    """"no", "fp16" or "bf16". None picks bf16 on a CUDA GPU that supports it, and on a CPU
    with native bf16 (`cpu_has_native_bf16`) when the input `size` is at least
    `CPU_BF16_FROM_SIZE`; else no. On a CPU, bf16 autocasts the training steps only
    (`callbacks.CpuBf16`, which falls back to float32 on non-finite gradients); fp16 needs
    CUDA."""
    requested = requested or _launcher_precision()
    if requested is None:
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        native = device.type == "cpu" and size is not None and size >= CPU_BF16_FROM_SIZE
        return "bf16" if native and cpu_has_native_bf16() else "no"
    if requested not in ("no", "fp16", "bf16"):
        raise PrecisionError(f"mixed_precision must be 'no', 'fp16' or 'bf16', not {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise PrecisionError("mixed precision fp16 needs a CUDA GPU; on CPU use "
                             "--mixed-precision bf16 or no")
    if requested == "bf16" and device.type not in ("cuda", "cpu"):
        raise PrecisionError(f"mixed precision bf16 runs on a CUDA GPU or a CPU, not on "
                             f"{device.type}; use --mixed-precision no")
    return requested


# CPU flags of native bf16 arithmetic (x86: AVX-512 BF16, AMX; Arm: the BF16 extension).
# Without them, oneDNN emulates bf16 and autocast makes the step slower, not faster.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo once a process ("" where it cannot be read): a fit asks several times."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively, from the flags in `/proc/cpuinfo`
    (`cpuinfo`: its text, for tests). False where it cannot be read (not Linux).

    Example:
        >>> cpu_has_native_bf16("flags : fpu avx2 avx512f avx512_bf16")
        True
    """
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


def _launcher_precision() -> str | None:
    # `accelerate launch` sets ACCELERATE_MIXED_PRECISION=no whenever it is not told a mode,
    # which cannot be told apart from `--mixed_precision no`: only a mode counts, so the
    # bf16 default holds under the launcher too (easycls's --mixed-precision no turns it off).
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    return env if env and env != "no" else None


@dataclass
class Session:
    """Process context of one run: device, rank, the collectives of its group (a
    `job.Group`) and the callback that makes training distributed.

    The collectives are Accelerate's (`broadcast_object_list`, `gather_object`,
    `wait_for_everyone`); flags that every batch may raise go over a CPU (gloo) side group.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    accelerator: Any = field(default=None, repr=False)
    local_rank: int = 0
    local_world_size: int = 1
    _gloo: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def of_launch(cls) -> Session:
        """The rank a launcher gave this process, without joining its group: enough to
        decide who reports an error that happens before or after the run."""
        return cls(int(os.environ.get("RANK", "0")), world_size())

    @property
    def size(self) -> int:
        """Processes in the job (`job.Group`)."""
        return self.world_size

    @property
    def local_size(self) -> int:
        """Processes of the job on this machine (`job.Group`)."""
        return self.local_world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _joined(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    def shows_progress(self, quiet: bool) -> bool:
        """Progress bars, tables and messages: rank 0 only, and not when quiet."""
        return self.is_main and not quiet

    def printer(self, quiet: bool) -> Callable[..., None]:
        """`print` where this process shows messages, else a no-op. (Accelerate's
        `Accelerator.print` prints once per machine; easycls prints once per job.)"""
        return print if self.shows_progress(quiet) else (lambda *a, **k: None)

    def main_only(self, items: list) -> list:
        """`items` on rank 0, nothing elsewhere (file writers, loggers, progress bars)."""
        return list(items) if self.is_main else []

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 only, then let every rank continue together."""
        result = fn() if self.is_main else None
        self.barrier()
        return result

    def release(self, learn) -> None:
        """After training, let `learn` work in this process alone: on rank 0, `predict`,
        `show_results`, `tta`, `get_preds` and `export` must not wait for the other ranks.
        The trainer goes (fastai's `detach_distributed`), and fastai's own gathers (which
        follow WORLD_SIZE) see one process. The trainer stays in a single-process run."""
        if self.world_size > 1:
            learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, DataParallelTrainer)])
            learn.add_cb(ProcessLocal())

    def barrier(self) -> None:
        if self._joined():
            self.accelerator.wait_for_everyone()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (decisions made from timings must match)."""
        if not self._joined():
            return value
        return broadcast_object_list([value])[0]


    def from_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on rank 0 alone, and its result, or the error it raised, on every rank.

        For what only rank 0's machine is sure to hold: on several machines without a shared
        filesystem, the run directory (config.json, checkpoint.pth) is on rank 0's disk alone,
        and a file of the same name on another machine may be a stale one.
        """
        if not self._joined():
            return fn()
        out = None
        if self.is_main:
            try:
                out = (fn(), None)
            except Exception as e:  # every rank raises it, so none waits for the others alone
                out = (None, e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))
        value, error = self.broadcast(out)
        if error is not None:
            raise error
        return value

    def gather(self, value: Any) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self._joined():
            return [value]
        return gather_object([value])

    def any_rank(self, *flags: bool) -> list[bool]:
        """Each flag true on every rank when it is true on any (a signal seen by one stops all)."""
        if not self._joined():
            return [bool(f) for f in flags]
        t = torch.tensor([int(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._cpu_group())
        return [bool(v) for v in t.tolist()]

    def _cpu_group(self):
        # Under NCCL a flag would sit on the GPU, and reading it back waits for every queued
        # kernel: asked each batch (the checkpointer does), that stalls the loop once per
        # step. Flags go over a CPU (gloo) group instead, made once, by every rank together.
        if dist.get_backend() != "nccl":
            return None
        if self._gloo is None:
            self._gloo = dist.new_group(backend="gloo")
        return self._gloo

    def alone(self):
        """:func:`one_process`: for `lr_find`, whose temporary save/restore is rank-0-only in
        fastai (the restore then waits in a barrier the other ranks never reach). Pair it
        with `broadcast` on the result."""
        return one_process()

    def trainer(self) -> DataParallelTrainer:
        """The callback that makes training distributed: DDP (with synced batch norm on
        CUDA) and the sharded loaders."""
        return DataParallelTrainer(self.accelerator, self.rank, self.world_size,
                                   sync_bn=self.device.type == "cuda" and self.world_size > 1)

    def batch_sizes(self, bs: int) -> str:
        return f"bs {bs} per process x {self.world_size} = {bs * self.world_size}"


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:
        return False


_clean_exit = True  # False once this process is leaving on an error
EXIT_GRACE_SECONDS = 0.2


def leaving_on_error() -> None:
    """Say this process exits on an error: it leaves without waiting for the others (they
    may be inside a collective it will never join; the launcher stops them)."""
    global _clean_exit
    _clean_exit = False


def _note_uncaught(hook: Callable) -> Callable:
    def excepthook(*exc_info):
        leaving_on_error()
        return hook(*exc_info)
    return excepthook


_exit_hooked = False


def _hook_exit() -> None:
    """Once per process (a script may call `fit` several times): leave the group at exit,
    and note an uncaught exception as an exit on an error."""
    global _exit_hooked
    if not _exit_hooked:
        atexit.register(_leave_group)
        sys.excepthook = _note_uncaught(sys.excepthook)
        _exit_hooked = True


def _leave_group() -> None:
    """Leave the process group before the interpreter tears down.

    gloo's worker threads release a finished collective's tensors on their own; one that
    does so while Python is finalizing cannot take the GIL, and the rank aborts
    ("terminate called without an active exception": about one two-process run in six,
    a finished job reported failed). On a clean exit a barrier waits until every rank's
    collectives are done, then the group is destroyed while Python still runs. A process
    leaving on an error skips the barrier: a peer may never reach it.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if _clean_exit:
        try:
            dist.barrier()
        except Exception:  # a peer that failed or left: tear down all the same
            pass
    # The worker thread that ran the last collective drops it just after the caller has
    # its result: give it that moment while Python can still take the GIL for it.
    time.sleep(EXIT_GRACE_SECONDS)
    dist.destroy_process_group()


def session(cpu: bool | None = None, timeout: float | None = None) -> Session:
    """The session of this process; single-process unless started by a launcher.

    Args:
        cpu: stay on the CPU even when CUDA is there.
        timeout: seconds a collective (a barrier while another rank builds a cache) may
            wait before the job fails (see `process_group_timeout`).

    Example:
        >>> sess = session()   # under torchrun: joins the process group (gloo on CPU)
        >>> sess.world_size
    """
    use_cuda = torch.cuda.is_available() and not cpu
    world = world_size()
    if world == 1:
        device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            if use_cuda
            else torch.device("cpu")
        )
        return Session(0, 1, device)
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Accelerator joins the process group the launcher described (NCCL on CUDA, gloo on CPU).
    # Mixed precision stays with fastai's callback, so Accelerator itself runs in fp32.
    wait = InitProcessGroupKwargs(timeout=timedelta(seconds=process_group_timeout(timeout)))
    acc = Accelerator(cpu=not use_cuda, mixed_precision="no", kwargs_handlers=[wait])
    _hook_exit()
    # On CPU accelerate may say "cpu:0"; tensors saved from there cannot be loaded again.
    device = acc.device if acc.device.type == "cuda" else torch.device("cpu")
    local = local_world_size()
    return Session(acc.process_index, acc.num_processes, device, acc,
                   local_rank=acc.local_process_index, local_world_size=local)
