"""Preemption-safe training: atomic `checkpoint.pth`, stop-on-signal, and exact resume.

A run is a list of one-cycle `Phase`s (fastai's `fine_tune` is two: frozen, unfrozen).
`Checkpointer` saves, atomically, the model, optimizer, the position (phase, epoch, batches
done), the data order (the training loader's RNG state at the epoch's start) and the RNG
states, at every epoch end, every `minutes` inside long epochs, and when SIGTERM or SIGINT
arrives (then it stops the fit and `run_phases` raises `TrainingInterrupted`). Resuming
starts each phase through fastai's own `fit_one_cycle(start_epoch=)`, so the one-cycle
schedule continues from the same `pct_train`, then skips the batches already done.
"""

from __future__ import annotations

import hashlib
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException
from fastcore.foundation import L

from . import __version__
from .bundle import bare_model
from .errors import UserError
from .rundir import write_file
from .safeio import WriteError, atomic_write

__all__ = ["CHECKPOINT", "Phase", "plan_phases", "Checkpointer", "TrainingInterrupted",
           "data_fingerprint",
           "CheckpointError", "save_checkpoint", "load_checkpoint", "run_phases", "trim_history",
           "remove_checkpoint"]

CHECKPOINT = "checkpoint.pth"
_FORMAT = 1


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used for this run."""


class TrainingInterrupted(UserError, RuntimeError):
    """Training stopped by a signal after writing a checkpoint."""

    def __init__(self, signum: int, run_dir: Path):
        self.signum, self.run_dir = signum, run_dir
        self.exit_code = 128 + signum  # exit as the signal did
        super().__init__(f"training stopped by {signal.Signals(signum).name}; the checkpoint is "
                         f"in {Path(run_dir) / CHECKPOINT}. Continue with: "
                         f"easycls fit --resume {run_dir}")


@dataclass
class Phase:
    """One `fit_one_cycle` call: epochs, lr (float or slice), its keywords, and freezing."""

    name: str
    epochs: int
    lr: Any
    kwargs: dict = field(default_factory=dict)
    freeze: bool | None = None  # True: learn.freeze(); False: learn.unfreeze(); None: as is


def plan_phases(fine_tune: bool, epochs: int, lr: float, freeze_epochs: int = 1,
                body_lr_ratio: float = 0.01) -> list[Phase]:
    """The phases of fastai's `fine_tune` (or one `fit_one_cycle` from scratch), made explicit
    so a checkpoint can say which phase it stopped in. The defaults are `fine_tune`'s: one
    frozen epoch, then the body at 1/100 of the head's lr; no frozen phase at 0 epochs.

    Example:
        >>> [p.name for p in plan_phases(True, 5, 1e-3)]
        ['frozen', 'unfrozen']
    """
    if not fine_tune:
        return [Phase("train", epochs, lr)]
    frozen = [Phase("frozen", freeze_epochs, slice(lr), dict(pct_start=0.99), freeze=True)]
    return frozen * bool(freeze_epochs) + [
        Phase("unfrozen", epochs, slice(lr / 2 * body_lr_ratio, lr / 2),
              dict(pct_start=0.3, div=5.0), freeze=False)]


# ---- atomic files ---------------------------------------------------------------------------

def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` through a temporary file, fsynced, then renamed over it: a crash
    or a full disk mid-write leaves the previous checkpoint intact (see `safeio.atomic_write`)."""
    path = Path(path)
    old = path.stat().st_size if path.is_file() else None  # the new one needs about as much
    with atomic_write(path, expected_size=old) as f:
        torch.save(state, f)
    return path


def remove_checkpoint(run_dir: str | Path) -> None:
    """A completed run needs no resume state (optimizer moments: about 3x the model's size)."""
    for path in (Path(run_dir) / CHECKPOINT, Path(run_dir) / (CHECKPOINT + ".tmp")):
        path.unlink(missing_ok=True)


def data_fingerprint(refs: list[str], is_valid: list[bool]) -> dict:
    """What a checkpoint records of the data it was trained on: the train and valid counts and
    a SHA-256 of every image with its side of the split (32 bytes, whatever the data size)."""
    digest = hashlib.sha256()
    for ref, valid in sorted(zip(map(str, refs), map(bool, is_valid))):
        digest.update(f"{int(valid)}{ref}\0".encode("utf-8", "surrogateescape"))
    n_valid = sum(map(bool, is_valid))
    return {"train": len(refs) - n_valid, "valid": n_valid, "sha256": digest.hexdigest()}


def load_checkpoint(run_dir: str | Path, *, arch: str, classes: list[str],
                    data: dict | None = None) -> dict:
    """The checkpoint of `run_dir`, refused unless it matches this easycls version, arch,
    classes and (when both have one) `data_fingerprint`, and every field has its expected
    form."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no {CHECKPOINT}: nothing to resume (a run writes "
                              "one at the end of its first epoch, and removes it when it "
                              "completes unless --keep-checkpoint)")
    try:
        # Our own file, but still no pickled code: tensors, numbers, strings and containers only.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e}); it is damaged. "
                              "Start the run again without --resume.") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not an easycls checkpoint")
    _check_matches(state, path, arch, classes)
    _check_fields(state, path)
    _check_same_data(state.get("data"), data, path)
    return state


def _check_same_data(then: dict | None, now: dict | None, path: Path) -> None:
    """Refuse a resume on changed data: the split would change, and images already trained on
    could land in validation. (Older checkpoints carry no fingerprint: not checked.)"""
    if then is None or now is None or then == now:
        return
    if not isinstance(then, dict):
        raise CheckpointError(f"{path}: 'data' should be a data fingerprint; the file is damaged")
    counts = (f"it was {then.get('train')} train / {then.get('valid')} valid images, now "
              f"{now['train']} / {now['valid']}" if (then.get("train"), then.get("valid"))
              != (now["train"], now["valid"]) else
              f"the same counts ({now['train']} train / {now['valid']} valid) but other files")
    raise CheckpointError(f"the data changed since {path} was written ({counts}): resuming would "
                          "split it again, and images already trained on could land in "
                          "validation. Put the data back as it was to resume, or start a new "
                          "run (--overwrite, or another --out)")


# What a checkpoint must hold: key -> (check, expected form), checked before anything is restored.
def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_FIELDS = {
    "format": (lambda v: v == _FORMAT, f"the number {_FORMAT}"),
    "phase": (_count, "an integer >= 0"),
    "epoch": (_count, "an integer >= 0"),
    "batches_done": (_count, "an integer >= 0"),
    "n_epoch": (lambda v: _count(v) and v >= 1, "an integer >= 1"),
    "history_rows": (_count, "an integer >= 0"),
    "elapsed": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number of seconds >= 0"),
    "data_rng": (lambda v: isinstance(v, list) and len(v) == 3, "a saved random state"),
    "model": (lambda v: isinstance(v, dict) and all(torch.is_tensor(t) for t in v.values()),
              "a dict of tensors"),
    "opt": (lambda v: isinstance(v, dict) and {"state", "hypers"} <= set(v), "an optimizer state"),
    "rng": (lambda v: isinstance(v, dict) and {"torch", "python", "numpy"} <= set(v),
            "saved random states"),
}


def _check_fields(state: dict, path: Path) -> None:
    for key, (ok, form) in _FIELDS.items():
        if key not in state or not ok(state[key]):
            got = ("missing" if key not in state
                   else f"{type(state[key]).__name__} {state[key]!r:.40}")
            raise CheckpointError(f"{path}: {key!r} should be {form}, found {got}; the file is "
                                  "damaged or not from easycls. Start the run again without "
                                  "--resume.")
    if state["epoch"] > state["n_epoch"]:
        raise CheckpointError(f"{path}: 'epoch' {state['epoch']} is past 'n_epoch' "
                              f"{state['n_epoch']}; the file is damaged. Start the run again.")


def _check_matches(state: dict, path: Path, arch: str, classes: list[str]) -> None:
    found = {"easycls version": state.get("easycls_version"), "arch": state.get("arch"),
             "class list": state.get("classes")}
    wanted = {"easycls version": __version__, "arch": arch, "class list": list(classes)}
    for what in found:
        if found[what] != wanted[what]:
            raise CheckpointError(f"{path} was written with {what} {_shown(found[what])}, but "
                                  f"this run has {_shown(wanted[what])}; it cannot be resumed "
                                  "here. Start a new run (another --out) or use the matching "
                                  "easycls version and data.")


def _shown(value) -> str:
    if isinstance(value, list):
        more = ", ..." if len(value) > 5 else ""
        return f"{len(value)} classes ({', '.join(map(str, value[:5]))}{more})"
    return repr(value)


def trim_history(path: str | Path, rows: int) -> None:
    """Keep the header and the first `rows` epochs of `history.csv` (rows written after the
    checkpoint are redone by the resumed run)."""
    path = Path(path)
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        write_file(path, "".join(lines[: rows + 1]) if rows else "")


# ---- RNG ------------------------------------------------------------------------------------

def _rng_state() -> dict:
    mt, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=_py_state(random.getstate()),
                 numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                            has_gauss=int(has_gauss), gauss=float(gauss)))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_py_state_back(state["python"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _weights_only_safe(obj):
    """fastai's optimizer state with `L`s and numpy scalars as lists and floats, so the
    checkpoint loads with `torch.load(weights_only=True)`."""
    if isinstance(obj, dict):
        return {k: _weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, L)):
        return [_weights_only_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _py_state(s) -> list:
    return [s[0], list(s[1]), s[2]]  # plain lists load with weights_only


def _py_state_back(s) -> tuple:
    return (s[0], tuple(s[1]), s[2])


# ---- the callback ---------------------------------------------------------------------------

def _attempt(state: dict, path: Path) -> WriteError | None:
    """Save, or return why not: the run then stops with that one-line error, the last good
    checkpoint still in place for `--resume`."""
    try:
        save_checkpoint(state, path)
    except WriteError as e:
        advice = (" Then continue from the last good checkpoint: "
                  f"easycls fit --resume {path.parent}" if path.is_file() else "")
        return type(e)(str(e) + advice, e.errno)
    return None


class Checkpointer(Callback):
    """Saves `run_dir/checkpoint.pth` at epoch ends, every `minutes`, and on SIGTERM/SIGINT.

    `session` decides who writes (rank 0) and makes every rank stop at the same batch.
    `meta` (arch, classes, multi_label, ...) and `extra()` (e.g. the budget plan) go into
    every checkpoint.
    """

    order = 65  # after HistoryCSV (60) has written the epoch's row

    def __init__(self, run_dir: Path, session, meta: dict, minutes: float | None = None,
                 t_start: float | None = None, extra: Callable[[], dict] = dict):
        self.run_dir, self.session, self.meta, self.minutes = Path(run_dir), session, meta, minutes
        self.t_start = t_start if t_start is not None else time.perf_counter()
        self.extra, self.signum, self.interrupted, self.failed = extra, None, None, None
        self.phase, self.offset, self.resume = 0, 0, None

    # position -------------------------------------------------------------------------------
    def start_phase(self, index: int, history_offset: int, resume: dict | None) -> None:
        self.phase, self.offset, self.resume = index, history_offset, resume

    def before_fit(self):
        self._last_save, self._done = time.perf_counter(), 0
        if self.resume is not None and "smooth_loss" in self.resume:
            # fastai's Recorder (order 50) has just reset its running loss; the uninterrupted
            # run would carry it on, and history.csv's train_loss is that running value.
            smooth = self.learn.recorder.smooth_loss
            smooth.val = self.resume["smooth_loss"]["val"].clone()
            smooth.count = int(self.resume["smooth_loss"]["count"])

    def before_epoch(self):
        self._skipped = False

    def after_cancel_epoch(self):
        self._skipped = True  # fastai's SkipToEpoch passing over an epoch done before the resume

    def before_train(self):
        # `learn.dl` is distributed.TrainShardsDL (also in one process); `.dl` is the fastai loader.
        self._done, dl = 0, self.learn.dl
        self._epoch_rng = dl.dl.rng.getstate()
        r = self.resume
        if r is not None and r["epoch"] == self.epoch:
            # Same data order as the interrupted pass, minus the batches already trained on.
            dl.dl.rng.setstate(_py_state_back(r["data_rng"]))
            self._epoch_rng = dl.dl.rng.getstate()
            dl.skip = self._done = r["batches_done"]
            self.learn.pct_train = (self.epoch + self._done / max(1, len(dl))) / self.n_epoch
            self.resume = None

    def after_batch(self):
        if self.training:
            self._done += 1
        due = bool(self.minutes) and time.perf_counter() - self._last_save >= 60 * self.minutes
        stop, due = self.session.any_rank(self.signum is not None, due and self.training)
        if stop:
            self._save(self.epoch, self._done, self._epoch_rng)
            self.interrupted = self.signum or signal.SIGTERM
            raise CancelFitException()
        if due:
            self._save(self.epoch, self._done, self._epoch_rng)

    def after_epoch(self):
        if not self._skipped:
            self._save(self.epoch + 1, 0, self.dls.train.dl.rng.getstate())

    def _save(self, epoch: int, done: int, data_rng) -> None:
        state = dict(
            format=_FORMAT,
            easycls_version=__version__,
            **self.meta,
            phase=self.phase,
            epoch=epoch,
            batches_done=done,
            n_epoch=self.n_epoch,
            data_rng=_py_state(data_rng),
            history_rows=self.offset + epoch,
            elapsed=time.perf_counter() - self.t_start,
            model=bare_model(self.model).state_dict(),
            opt=_weights_only_safe(self.opt.state_dict()),
            rng=_rng_state(),
            smooth_loss=self._smooth_loss(),
            **self.extra(),
        )
        failed = self.session.on_main(lambda: _attempt(state, self.run_dir / CHECKPOINT))
        if self.session.any_rank(failed is not None)[0]:  # every rank stops, not only rank 0
            self.failed = failed or WriteError(f"rank 0 could not write "
                                               f"{self.run_dir / CHECKPOINT}")
            raise CancelFitException()
        self._last_save = time.perf_counter()

    def _smooth_loss(self) -> dict:
        smooth = self.learn.recorder.smooth_loss
        val = torch.as_tensor(smooth.val).as_subclass(torch.Tensor)  # plain: loads weights_only
        return dict(val=val.detach().cpu().clone(), count=int(smooth.count))

    # signals ----------------------------------------------------------------------------------
    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """While inside, SIGTERM/SIGINT ask for a checkpoint and a clean stop; a second signal
        aborts at once (e.g. a process stuck waiting for a dead peer)."""
        def handler(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt
            self.signum = signum
        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def restore(learn, state: dict) -> None:
    """Model, optimizer and RNG states of a checkpoint (after the phase's freezing is set)."""
    bare_model(learn.model).load_state_dict(state["model"])
    if learn.opt is None:
        learn.create_opt()
    learn.opt.load_state_dict({"state": state["opt"]["state"], "hypers": L(state["opt"]["hypers"])})
    _set_rng_state(state["rng"])


def run_phases(learn, phases: list[Phase], ckpt: Checkpointer, *, resume: dict | None = None,
               last_phase_cbs: list | None = None, last_phase_epochs: int | None = None) -> None:
    """Train `phases` in order (from `resume`'s position), checkpointing through `ckpt`.

    `last_phase_cbs` (e.g. a `TimeBudget`) join the last phase, which then runs for
    `last_phase_epochs` loop epochs (the budget stops it).
    """
    offset = 0
    with ckpt.catching_signals():
        for i, ph in enumerate(phases):
            last = i == len(phases) - 1
            n_epoch = last_phase_epochs if (last and last_phase_epochs) else ph.epochs
            here = resume if (resume is not None and resume["phase"] == i) else None
            if resume is not None and i < resume["phase"]:
                offset += ph.epochs
                continue
            if ph.freeze is not None:
                learn.freeze() if ph.freeze else learn.unfreeze()
            if here is not None:
                restore(learn, here)
                if here["epoch"] >= here["n_epoch"]:  # this phase had ended: go on with the next
                    learn.dls.train.rng.setstate(_py_state_back(here["data_rng"]))
                    offset += here["n_epoch"]
                    resume = None
                    continue
            ckpt.start_phase(i, offset, here)
            cbs = [ckpt] + (list(last_phase_cbs or []) if last else [])
            learn.fit_one_cycle(n_epoch, ph.lr, cbs=cbs, start_epoch=here["epoch"] if here else 0,
                                **ph.kwargs)
            if ckpt.failed is not None:
                raise ckpt.failed
            if ckpt.interrupted:
                raise TrainingInterrupted(ckpt.interrupted, ckpt.run_dir)
            offset += ph.epochs
