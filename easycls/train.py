"""`fit()`: source -> data -> learner -> train -> run directory. The one orchestrator.

The module is `train`, not `fit`: a submodule named `fit` would replace the function
`easycls.fit` on the package as soon as it was imported.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed
from fastcore.basics import noop

from . import distributed
from .budget import UNBOUNDED_EPOCHS, TimeBudget, budget_origin
from .bundle import load
from .callbacks import (
    ChannelsLastAuto,
    CpuBf16,
    DeviceSmoothLoss,
    ImageCount,
    L1Penalty,
    PlainTensors,
)
from .check.split import exact_leaks, groups_kept, split_groups
from .checkpoint import (
    Checkpointer,
    CheckpointError,
    data_fingerprint,
    load_checkpoint,
    plan_phases,
    remove_checkpoint,
    run_phases,
    trim_history,
)
from .config import RECIPE_DEFAULTS, RESUMABLE, ConfigError, TrainConfig
from .data import storage
from .data.augment import AugmentWhenLong
from .data.cachedir import cache_root
from .data.given import GivenData, given_dataloaders
from .data.items import ItemTable
from .data.itemwise import ITEMWISE_NOTE, itemwise_data
from .data.prepare import (
    PreparedData,
    build_dataloaders,
    check_source,
    load_items,
)
from .data.recipes import get_recipe, is_recipe
from .distributed import cpu_has_native_bf16, resolve_precision
from .learners import (
    arch_name,
    check_arch,
    create_model,
    model_normalization,
    multi_label_learner,
    set_thresholds,
    single_label_learner,
)
from .lr_search import LrChoice, choose_lr
from .metrics import LastProbabilities, LastValidation, TallyValidation, multi_label_metrics
from .models import check_size, default_size
from .pieces import (
    Pieces,
    augmentation_note,
    logs_only,
    missing_on_resume,
    split_pieces,
    validation_note,
)
from .plan import AUGMENT_FROM_EPOCHS, default_augment, default_bs
from .predict import decisions, write_predictions
from .priors import init_output_bias
from .report import format_metrics, plot_confusion, plot_f1_threshold, plot_history
from .rundir import RunRecord, write_json, write_per_class, write_skipped
from .runlock import claim_together
from .runlog import (
    HistoryCSV,
    JsonEvents,
    PlainProgress,
    wants_plain_progress,
)
from .safeio import check_writable
from .snapshot import save
from .tally import SingleLabelTally
from .thresholds import per_class_report
from .trackers import Trackers
from .weights import IMAGENET_SCHEDULE, check_fits, default_schedule, start_weights

__all__ = ["fit", "resolve_config", "save"]


def resolve_config(source: str | None, **settings: Any) -> TrainConfig:
    """TrainConfig from recipe defaults, then everything the user passed (None = not passed).

    Raises:
        ConfigError: an unknown setting, or a value of the wrong type or out of range.
    """
    if source is None or source == "":
        raise ConfigError("give a source to train on (a folder, zip, CSV or dataset name), "
                          "or continue a run with --resume DIR (resume=DIR)")
    given = _given(settings)
    base = TrainConfig(source=str(source))
    if is_recipe(str(source)):
        recipe = get_recipe(str(source))
        defaults = {k: v for k, v in recipe.defaults.items() if k in RECIPE_DEFAULTS}
        base = base.updated(**defaults)
        base.extra = {**recipe.extra, **base.extra}
    cfg = base.updated(**given)
    cfg = _with_schedule(_source_defaults(cfg, given))
    # No size given nor set by a recipe: the size the model was made for (timm's config).
    cfg = cfg if cfg.size is not None else cfg.updated(size=default_size(cfg.arch))
    return cfg.updated(augment=default_augment(cfg.augment, epochs=cfg.epochs,
                                               fine_tune=bool(cfg.pretrained or cfg.weights),
                                               time_budget=cfg.time_budget))


def _source_defaults(cfg: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """With a run's or bundle's weights, its model.json's arch and input size unless given
    (the size also unless a recipe set one)."""
    src = start_weights(cfg.weights) if cfg.weights else None
    if src is None or src.meta is None:
        return cfg
    arch = {"arch": src.arch} if src.arch and "arch" not in given else {}
    size = {"size": src.meta["input_size"]} if cfg.size is None else {}
    return cfg.updated(**arch, **size)


def _with_schedule(cfg: TrainConfig) -> TrainConfig:
    """The fine-tune schedule not given, from the weights' source (`weights.default_schedule`)."""
    if cfg.freeze_epochs is not None and cfg.body_lr_ratio is not None:
        return cfg
    freeze, ratio = default_schedule(cfg.weights)
    return cfg.updated(freeze_epochs=freeze if cfg.freeze_epochs is None else cfg.freeze_epochs,
                       body_lr_ratio=ratio if cfg.body_lr_ratio is None else cfg.body_lr_ratio)


def _given(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings actually passed; an nn.Module or factory `arch` becomes its name."""
    given = {k: v for k, v in settings.items() if v is not None}
    arch = given.get("arch")
    if arch is not None and not isinstance(arch, str):
        if not (isinstance(arch, torch.nn.Module) or callable(arch)):
            raise ConfigError(f"arch={arch!r}: must be a timm model name, an nn.Module or a "
                              "callable n_classes -> nn.Module")
        given["arch"] = arch_name(arch)
    return given


def _default_out(cfg: TrainConfig, table: ItemTable) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{table.name}-{cfg.arch.replace('/', '_').replace(':', '_')}-{stamp}"


def _build_learner(data: PreparedData, cfg: TrainConfig, arch, sess, run_dir: Path,
                   writers: list, pieces: Pieces | None = None,
                   ) -> tuple[Learner, tuple[list[float], list[float]]]:
    """The Learner (with `writers`, the run's file writers and trackers' callbacks) and the
    (mean, std) its inputs are normalized with."""
    pieces = pieces or Pieces()
    src = start_weights(cfg.weights) if cfg.weights else None
    model = create_model(arch, len(data.vocab), cfg.pretrained, cfg.weights, cfg.ps, cfg.size,
                         classes=data.vocab)
    # A run's weights: its own normalization (model.json); ImageNet weights: timm's config.
    norm = src.normalization if src is not None else None
    norm = norm or (model_normalization(model) if (cfg.pretrained or src) else None)
    if isinstance(data, GivenData):  # the user's loaders keep their own normalization
        norm = data.normalization or norm or data.pixel_stats()
        dls = data.loaders(norm)
    else:
        norm = norm or data.pixel_stats()
        dls = build_dataloaders(cfg, data, device=sess.device, normalization=norm,
                                batch_tfms=pieces.batch_tfms)
    cbs = _callbacks(cfg, sess, writers, pieces.cbs)
    # The model holds its starting weights already; `pretrained` makes the factory freeze it.
    kw = dict(pretrained=bool(cfg.pretrained or src), wd=cfg.wd, cbs=cbs, path=run_dir,
              **pieces.learner_kwargs())
    if data.multi_label:
        targets = data.targets() if isinstance(data, GivenData) else data.datasets[0].targets
        pos_weight = (_pos_weight(targets) if cfg.class_weights == "auto" and targets is not None
                      else None)
        if cfg.prior_bias and targets is not None:
            init_output_bias(model, targets)
        learn = multi_label_learner(dls, model, len(data.vocab), pos_weight=pos_weight, **kw)
    else:
        learn = single_label_learner(dls, model, len(data.vocab),
                                     label_smoothing=cfg.label_smoothing, **kw)
    if cfg.compile:
        learn.model = torch.compile(learn.model)
    _progress(learn, not sess.shows_progress(cfg.quiet))
    return learn, (list(norm[0]), list(norm[1]))


def _progress(learn: Learner, silent: bool) -> None:
    """fastai's bars on a terminal; plain lines where output is a log (CI, SLURM, a file)."""
    if silent:
        learn.remove_cb(ProgressCallback)
        learn.logger = noop  # fastai's own "no logging" (and a plain name for export's pickle)
    elif wants_plain_progress():
        learn.remove_cb(ProgressCallback)
        learn.add_cb(PlainProgress())


def _progress_after_fit(learn: Learner) -> None:
    """`quiet` is `fit`'s alone: the returned Learner logs and shows progress as fastai's."""
    learn.logger = print
    if not any(isinstance(cb, (ProgressCallback, PlainProgress)) for cb in learn.cbs):
        learn.add_cb(PlainProgress() if wants_plain_progress() else ProgressCallback())


_RECORDED = ("lrs", "iters", "losses", "values", "hps", "metric_names")


def _keep_recorder(learn: Learner):
    """A function that puts back what fastai's Recorder holds now (the last training fit's
    losses, lrs, validation rows): the final validation and test passes are fits of their
    own, which reset it, and `learn.recorder.plot_loss()` would draw nothing."""
    rec = learn.recorder
    saved = {k: getattr(rec, k) for k in _RECORDED if hasattr(rec, k)}
    return lambda: [setattr(rec, k, v) for k, v in saved.items()]


def _callbacks(cfg: TrainConfig, sess, writers: list, user: list = ()) -> list:
    """Every callback of the run's Learner, assembled here: the training step's (plain
    tensors, the images trained on, L1, memory format, the smoothed loss on the device,
    mixed precision on CUDA, bf16 training steps on a CPU), the processes' (DDP and
    sharding), live augmentation, and `writers` (rank 0's: what the run writes as it
    trains), and the `user`'s own (`cbs=`): those that only log run where the writers do,
    on rank 0."""
    cbs = [PlainTensors(), ImageCount()] + ([L1Penalty(cfg.l1)] if cfg.l1 else [])
    cbs += [sess.trainer(), ChannelsLastAuto(cfg.channels_last), DeviceSmoothLoss()]
    precision = resolve_precision(cfg.mixed_precision, sess.device, cfg.size)
    if sess.device.type == "cuda" and precision != "no":
        from fastai.callback.fp16 import MixedPrecision
        cbs.append(MixedPrecision(precision))
    elif sess.device.type == "cpu" and precision == "bf16":
        if not cpu_has_native_bf16():
            warnings.warn("--mixed-precision bf16 on a CPU without native bf16 (AVX-512 BF16, "
                          "AMX or Arm BF16): emulated, it trains slower than float32",
                          stacklevel=2)
        cbs.append(CpuBf16())
    cbs += [AugmentWhenLong(AUGMENT_FROM_EPOCHS)] if cfg.augment is None else []
    cbs += [cb for cb in user if not logs_only(cb)] + sess.main_only(
        [cb for cb in user if logs_only(cb)])
    return cbs + writers


def _writer_callbacks(cfg: TrainConfig, run_dir: Path, history_start: int) -> list:
    cbs = [HistoryCSV(run_dir / "history.csv", start=history_start)]
    return cbs + ([JsonEvents(cfg.log_json)] if cfg.log_json else [])


def _trackers(cfg: TrainConfig, run_dir: Path, sess, start: int, resumed: bool) -> Trackers:
    """The run's trackers (`--log`, and `--tensorboard`), opened on rank 0 only; a resumed
    run continues the trackers' runs of its first session."""
    names = (cfg.log.split(",") if cfg.log else []) + (["tensorboard"] if cfg.tensorboard else [])
    return Trackers(sess.main_only(names), run_dir, dataclasses.asdict(cfg), start, resumed)


def _pos_weight(targets: np.ndarray) -> torch.Tensor:
    pos = targets.sum(0)
    return torch.tensor((len(targets) - pos) / np.maximum(pos, 1), dtype=torch.float32)


def _pick_lr(learn: Learner, cfg: TrainConfig, say, sess) -> LrChoice:
    """The lr to train with; the summary line says how it was chosen and what that cost."""
    fine_tune = bool(cfg.pretrained or cfg.weights)
    steps = len(learn.dls.train) * (cfg.epochs + (cfg.freeze_epochs if fine_tune else 0))
    # Each process probes on its own (fastai's lr_find is single-process); all use rank 0's lr.
    choice = choose_lr(learn, lr=cfg.lr, fine_tune=fine_tune, total_bs=cfg.bs * sess.world_size,
                       planned_steps=steps, alone=sess.alone, agree=sess.broadcast)
    if choice.how != "given":
        say(choice.summary())
    return choice


def _train(learn: Learner, cfg: TrainConfig, sess, meta: dict, t_start: float,
           state: dict | None, n_test: int = 0,
           seen: LastValidation | LastProbabilities | None = None) -> dict:
    """fine_tune or fit_one_cycle, checkpointed and resumable; under a time budget the last
    phase's epochs are planned by `TimeBudget`; `seen` tallies the last phase's validation
    passes. Returns the budget facts for metrics.json."""
    lr = cfg.lr * (sess.world_size if cfg.scale_lr else 1)
    phases = plan_phases(bool(cfg.pretrained or cfg.weights), cfg.epochs, lr, cfg.freeze_epochs,
                         cfg.body_lr_ratio)
    budget = None
    if cfg.time_budget:
        last = state and state["phase"] == len(phases) - 1
        guess = state["n_epoch"] if last else cfg.epochs
        # The final scores reuse the last epoch's validation when `seen` tallies it.
        budget = TimeBudget(cfg.time_budget, t_start, guess, tail_items=n_test,
                            check_every=1 if sess.world_size == 1 else 16, agree=sess.broadcast,
                            final_pass=seen is None)
    ckpt = Checkpointer(Path(cfg.out), sess, meta, cfg.checkpoint_minutes, t_start)
    last_cbs = [cb for cb in (budget, seen) if cb is not None]
    run_phases(learn, phases, ckpt, resume=state, last_phase_cbs=last_cbs or None,
               last_phase_epochs=UNBOUNDED_EPOCHS if budget else None)
    if not budget:
        return {}
    live = getattr(learn, "augment_when_long", None)  # fastai names each callback on learn
    augment = {"augment": live.used} if live is not None else {}
    return dict(time_budget_seconds=cfg.time_budget, planned_epochs=budget.planned,
                budget_ended_early=budget.ended_early, **augment)


def _resumable(resume: str | Path) -> None:
    if not Path(resume).is_dir():
        raise CheckpointError(f"{resume} is not a folder: give the run directory of the run to "
                              "continue")


def _resumed_config(resume: str | Path, source: str | None, settings: dict,
                    pieces: Pieces | None = None) -> TrainConfig:
    """The config.json of the run to continue, with the settings that may change on resume.

    Raises:
        ConfigError: naming the settings given with a different value that cannot change,
            or the fastai pieces of the run that are not given again.
    """
    path = Path(resume) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{resume} holds no config.json: give the run directory of the "
                              "run to continue")
    stored = TrainConfig.from_json(path)
    given = _given({**settings, "source": source})
    if "out" in given and Path(given["out"]).resolve() == Path(resume).resolve():
        del given["out"]
    # Compared as resolved settings: an alias (`cache`) that names the stored value is no change.
    fixed = [k for k, v in given.items()
             if k not in RESUMABLE and stored.updated(**{k: v}) != stored]
    if fixed:
        shown = ", ".join(f"{k} (run: {getattr(stored, k)!r}, given: {given[k]!r})" for k in fixed)
        raise ConfigError(f"resume={str(resume)!r} continues the run as its config.json says; "
                          f"these settings cannot change on resume: {shown}. Settings that can: "
                          f"{', '.join(RESUMABLE)}")
    if stored.body_lr_ratio is None:  # a config.json from before the setting: fine_tune's
        stored = stored.updated(body_lr_ratio=IMAGENET_SCHEDULE[1])
    missing = missing_on_resume(stored.fastai, pieces or Pieces())
    if missing:
        raise ConfigError(f"resume={str(resume)!r}: the run was trained with fastai pieces that "
                          f"config.json can only name; give them to fit again: "
                          f"{'; '.join(missing)}")
    return stored.updated(out=str(resume), **{k: v for k, v in given.items() if k in RESUMABLE})


def _final_metrics(learn: Learner, data: PreparedData, cfg: TrainConfig,
                   pieces: Pieces | None = None,
                   seen: LastValidation | LastProbabilities | None = None) -> dict:
    """metrics.json's validation metrics, and what the run's report needs of the predictions:
    multi-label, the (probs, targets) the thresholds were tuned on (N x labels); single-label,
    the confusion matrix only, counted batch by batch (no N x classes array is kept). Both
    come from the last epoch's validation pass (`seen`) when it scored every image, else
    from a pass of their own. The user's own metrics are scored in the same pass (fastai's
    Recorder feeds them)."""
    n_valid = len(learn.dls.valid.dataset)
    if data.multi_label:
        last = seen.last if seen is not None else None
        # Probabilities whatever the loss (a user's loss may have no `activation`).
        probs, targets = (last if last is not None and len(last[0]) == n_valid
                          else learn.get_preds(ds_idx=1, act=torch.sigmoid))
        metrics = multi_label_metrics(probs, targets, cfg.threshold_average)
        out = dict(metrics=metrics, valid_preds=(probs, targets))
    else:
        tally = seen.last if seen is not None else None
        if tally is None or tally.n != n_valid:
            tally = SingleLabelTally(len(data.vocab))
            # A prediction pass as fastai knows it (loggers stay out of it), storing nothing.
            learn.get_preds(ds_idx=1, with_preds=False, with_targs=False,
                            cbs=[TallyValidation(tally)])
        out = dict(metrics=tally.metrics(), confusion=tally.confusion)
    for m in pieces.metrics if pieces else []:
        if m.name not in out["metrics"] and m.value is not None:
            out["metrics"][m.name] = float(m.value)
    return out


def _check_early(cfg: TrainConfig, arch_obj: Any, sess) -> None:
    """Refuse what would fail later, before any data is scanned."""
    resolve_precision(cfg.mixed_precision, sess.device)
    if isinstance(arch_obj, str):
        check_arch(arch_obj)
        check_size(arch_obj, cfg.size)
    if cfg.weights and (isinstance(arch_obj, (str, torch.nn.Module))):
        check_fits(arch_obj, start_weights(cfg.weights), cfg.size)
    _check_writable(cfg)  # every rank: each stops with the same line, none waits


def _check_writable(cfg: TrainConfig) -> None:
    """The run directory's folder and the cache can be written: known before any data is read,
    not after training (`--out` itself is created and locked by the claim)."""
    if not cfg.out:
        check_writable("runs", "the run directory", "pass --out with a folder you can write to")
    if cfg.store != "none":
        check_writable(cache_root(), "the decoded-image cache", "point EASYCLS_CACHE at a "
                       "folder you can write to, or pass --store none")


def fit(source: Any = None, items: Any = None, *, resume: str | None = None,
        **settings: Any) -> Learner:
    """Train an image classifier and write its run directory.

    Args:
        source: a folder (class folders or train/valid split folders), a .zip, a CSV of
            labels (with `images=`), or a dataset name (`easycls datasets` lists them); or
            the user's own fastai `DataLoaders` (also as `dls=`), or a `DataBlock`.
        items: a DataBlock's source (`fit(block, path)`).
        resume: a run directory to continue from its `checkpoint.pth`, with its
            `config.json`; only `config.RESUMABLE` settings may then change.
        **settings: any `TrainConfig` option (arch, epochs, lr, bs, size, pretrained, ...);
            `arch` may also be an `nn.Module` or a callable `n_classes -> nn.Module`.
            A recipe's defaults fill what is not given.
            fastai's own pieces, with fastai's names (`pieces.PIECES`): `cbs` (added to
            easycls's callbacks; loggers on rank 0 only), `loss_func`, `metrics` (added to
            easycls's; `default_metrics=False` replaces them), `opt_func`, `splitter`, `moms`,
            `batch_tfms` (replacing easycls's augmentation, or added to it with augment=True).

    Returns:
        The trained fastai Learner; `learn.easycls` is the run's record (run_dir, config,
        vocab, normalization, metrics).

    Raises:
        ConfigError: an unknown setting or a bad value, naming it and its valid range.

    Example:
        >>> learn = fit("digits")
        >>> learn.easycls.metrics["accuracy"]
    """
    pieces, settings = split_pieces(settings)
    if settings.get("dls") is not None or not (source is None or isinstance(source, (str, Path))):
        # The user's own fastai data: config.json names it, as it names the other pieces.
        pieces.data, pieces.items = settings.pop("dls", None) or source, items
        source = f"<{type(pieces.data).__name__}>"
        if pieces.item_tfms or pieces.batch_tfms:
            raise ConfigError("item_tfms/batch_tfms with your own DataLoaders or DataBlock: "
                              "give them to the DataBlock (or ImageDataLoaders) instead")
    settings.pop("dls", None)
    # The process group's timeout: set before any setting is checked, so taken as given.
    sess = distributed.session(timeout=settings.get("dist_timeout"))
    with ExitStack() as held:  # the run directory's lock, held for the life of the run
        locks: list = []

        def claim(run_dir: str | Path, overwrite: bool = False) -> None:
            locks.append(held.enter_context(claim_together(sess, run_dir, resume=resume is not None,
                                                           overwrite=overwrite)))
        # Claimed before anything is read or written: a second run on it fails at once.
        if resume is not None:
            # Rank 0's machine holds the run directory (the others may have no copy of it).
            sess.from_main(lambda: _resumable(resume))
            claim(resume)
            cfg = sess.from_main(lambda: _resumed_config(resume, source, settings, pieces))
        else:
            cfg = resolve_config(source, **settings).updated(fastai=pieces.record())
            if (pieces.batch_tfms or pieces.item_tfms) and settings.get("augment") is None:
                cfg = cfg.updated(augment=False)  # the user's augmentation replaces easycls's
            if cfg.out:
                claim(cfg.out, cfg.overwrite)
        arch = settings.get("arch")
        arch_obj = arch if arch is not None and not isinstance(arch, str) else cfg.arch
        _check_early(cfg, arch_obj, sess)
        if pieces.data is None:
            check_source(cfg)

        def set_aside() -> None:  # everything checked: an overwritten run's files move away
            for lock in locks:
                if lock is not None and cfg.overwrite and resume is None:
                    lock.set_aside()
        set_aside()
        later = None if cfg.out else (lambda run_dir: (claim(run_dir, cfg.overwrite),
                                                       set_aside()))
        started = lambda: [lock.started() for lock in locks if lock is not None]  # noqa: E731
        return _fit(cfg, arch_obj, sess, resume is not None, later, started, pieces,
                    held.enter_context)


def _fit(cfg: TrainConfig, arch_obj: Any, sess, resumed: bool, claim, started,
         pieces: Pieces, hold) -> Learner:
    """`fit` once its settings are checked and, with `out` given, its directory is held;
    `claim` takes the lock of the default run directory once the data has named it;
    `started` is called before the first file of the run is written (an overwritten run's
    files, set aside until then, go); `hold` keeps a context (the trackers' runs) open until
    `fit` returns or fails."""
    say = sess.printer(cfg.quiet)
    set_seed(cfg.seed)
    # From the process's start for the CLI (imports count against a budget), else from here.
    t_start = budget_origin(time.perf_counter())
    if pieces.data is None and not pieces.item_tfms:
        table = load_items(cfg)
        groups = split_groups(table, cfg.split_by, sess.shows_progress(cfg.quiet))
        data = PreparedData(table, cfg, progress=sess.shows_progress(cfg.quiet), sess=sess,
                            groups=groups)
    else:  # fastai's loaders (the user's, or per item) decide size, batch size, augmentation
        data, groups = _given_data(pieces, cfg, sess)
        cfg = cfg.updated(size=data.size, bs=data.dls.bs,
                          augment=cfg.augment is True and pieces.data is None)
    run_dir = Path(cfg.out) if cfg.out else _default_out(cfg, data.table)
    if claim is not None:
        claim(run_dir)
    cfg = cfg.updated(out=str(run_dir))
    if cfg.bs is None:
        cfg = cfg.updated(bs=default_bs(len(data.datasets[0]), sess.world_size))
    sess.on_main(lambda: run_dir.mkdir(parents=True, exist_ok=True))
    say(_summary(data, cfg, sess, groups))
    if augmentation_note(pieces, cfg.augment):
        say(augmentation_note(pieces, cfg.augment))
    if pieces.item_tfms:
        say(ITEMWISE_NOTE)
    if validation_note(pieces) and not isinstance(data, GivenData):  # also under --quiet
        sess.printer(quiet=False)(validation_note(pieces))
    if pieces.data is None:
        sess.on_main(lambda: _warn_leaks(data, cfg, say))
    seen = data_fingerprint(data.table.refs, data.table.is_valid)
    state = (sess.from_main(lambda: load_checkpoint(run_dir, arch=cfg.arch, classes=data.vocab,
                                                    data=seen))
             if resumed else None)
    if state is not None:  # the budget and train_seconds count the time before the stop too
        t_start -= state["elapsed"]
        sess.on_main(lambda: trim_history(run_dir / "history.csv", state["history_rows"]))
    history_start = state["history_rows"] if state else 0
    trackers = hold(_trackers(cfg, run_dir, sess, history_start, resumed))
    writers = sess.main_only(_writer_callbacks(cfg, run_dir, history_start)) + trackers.callbacks
    learn, norm = _build_learner(data, cfg, arch_obj, sess, run_dir, writers, pieces)
    lr_choice = _pick_lr(learn, cfg, say, sess)
    cfg = cfg.updated(lr=lr_choice.lr)
    sess.on_main(started)
    sess.on_main(lambda: cfg.to_json(run_dir / "config.json"))  # before training: resume reads it
    t_session = time.perf_counter()
    t_train = t_session - (state["elapsed"] if state else 0.0)
    meta = dict(arch=cfg.arch, classes=data.vocab, data=seen)
    seen = LastProbabilities() if data.multi_label else LastValidation(len(data.vocab))
    budget_facts = _train(learn, cfg, sess, meta, t_start, state, len(data.table.test_refs),
                          seen)
    put_back_recorder = _keep_recorder(learn)
    t_trained = time.perf_counter()
    train_seconds = t_trained - t_train
    final = _final_metrics(learn, data, cfg, pieces, seen)
    metrics = final.pop("metrics")
    metrics.update(train_seconds=round(train_seconds, 3),
                   total_seconds=round(time.perf_counter() - t_start, 3), **budget_facts,
                   lr_choice=lr_choice.how, lr_search_seconds=round(lr_choice.seconds, 3),
                   **_how_it_ran(learn, cfg, sess, t_trained - t_session))
    if cfg.time_budget:  # a budget below one epoch (or the setup) cannot be met: say so
        metrics["budget_exceeded_seconds"] = round(
            max(0.0, metrics["total_seconds"] - cfg.time_budget), 3)
    trackers.summary(metrics)
    learn.easycls = RunRecord(run_dir, cfg, data.vocab, norm, data.multi_label, metrics, **final)
    set_thresholds(learn, metrics.get("thresholds"))  # learn.predict decides as easycls.load's
    sess.release(learn)  # from here on rank 0 uses `learn` alone (predict, show_results, ...)
    sess.on_main(lambda: _write_run(learn, data))
    if not cfg.keep_checkpoint:
        sess.on_main(lambda: remove_checkpoint(run_dir))
    _close_run(learn, writers)
    # Also under --quiet, one line (rank 0's) says how it went and where it is.
    over = metrics.get("budget_exceeded_seconds")
    done = format_metrics(metrics) + (
        f"; over the {cfg.time_budget:g} s time budget by {over:.1f} s (one epoch at least "
        "always runs)" if over else "")
    sess.printer(quiet=False)(f"done: {done}; run directory: {run_dir}" if cfg.quiet else
                              f"done: {done}\nrun directory: {run_dir}")
    put_back_recorder()
    if cfg.quiet and sess.is_main:
        _progress_after_fit(learn)
    return learn


def _given_data(pieces: Pieces, cfg: TrainConfig, sess) -> tuple[GivenData, list | None]:
    """The user's DataLoaders, or their DataBlock's over its source (`pieces.data`); or,
    with `item_tfms`, easycls's source through fastai's per-item pipeline (`itemwise`).
    With the split's groups (`--split-by`), when easycls split the data."""
    groups = None
    if pieces.data is None:
        table = load_items(cfg)
        groups = split_groups(table, cfg.split_by, sess.shows_progress(cfg.quiet))
        data = itemwise_data(table, cfg, pieces.item_tfms, pieces.batch_tfms, groups=groups,
                             world_size=sess.world_size, device=sess.device,
                             progress=sess.shows_progress(cfg.quiet))
    else:
        dls = given_dataloaders(pieces.data, pieces.items, bs=cfg.bs, device=sess.device)
        data = GivenData(dls, name=type(pieces.data).__name__.lower())
    for note in sess.main_only(data.bundle_notes()):
        print(note)
    return data, groups


def _close_run(learn: Learner, writers: list) -> None:
    """The run directory is final when `fit` returns: the Learner keeps no writer into it
    (history, events, TensorBoard), and its `path` is fastai's default (the DataLoaders'),
    so later training, `CSVLogger`, `learn.save` or `learn.export` write elsewhere.
    `easycls.save(learn, dir)` saves the Learner as it is then."""
    learn.remove_cbs(writers)
    learn.path, learn.model_dir = Path(getattr(learn.dls, "path", ".")), "models"


def _warn_leaks(data: PreparedData, cfg: TrainConfig, say) -> None:
    """One line when validation images are exact copies of training images."""
    t = data.table
    leaks = exact_leaks([r for r, v in zip(t.refs, t.is_valid) if not v],
                        [r for r, v in zip(t.refs, t.is_valid) if v])
    if leaks:
        say(f"warning: {len(leaks)} validation images are exact copies of training images "
            f"(e.g. {leaks[0][1]} = {leaks[0][0]}), so validation scores overstate; run "
            f"`easycls check {cfg.source}` to find near-copies too")


def _how_it_ran(learn: Learner, cfg: TrainConfig, sess, seconds: float) -> dict:
    """The processes, their device, the precision of the training steps and the images/s
    this session trained (validation included, as in `train_seconds`; a resumed run counts
    from its restart)."""
    device = sess.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    images = learn.image_count.images * sess.world_size  # every rank trains an equal shard
    precision = resolve_precision(cfg.mixed_precision, device, cfg.size)
    fell_back = [cb.fell_back for cb in learn.cbs if isinstance(cb, CpuBf16) and cb.fell_back]
    return dict(processes=sess.world_size, device=name, mixed_precision=precision,
                **({"bf16_to_float32_at": list(fell_back[0])} if fell_back else {}),
                images_per_s=round(images / max(seconds, 1e-9), 2))


def _summary(data: PreparedData, cfg: TrainConfig, sess, groups: list | None = None) -> str:
    n_valid = sum(data.table.is_valid)
    kind = "multi-label" if data.multi_label else "single-label"
    skipped = f", {len(data.table.skipped)} unreadable skipped" if data.table.skipped else ""
    if groups is not None:
        skipped += f", {groups_kept(groups)} groups kept on one side ({cfg.split_by})"
    pixels = storage.describe(data.store)
    start = f"; {start_weights(cfg.weights).describe()}" if cfg.weights else ""
    if cfg.weights or cfg.pretrained:
        start += (f"; fine-tuning: {cfg.freeze_epochs} frozen epoch(s), then the body at "
                  f"{cfg.body_lr_ratio:g} x the head's lr")
    precision = resolve_precision(cfg.mixed_precision, sess.device, cfg.size)
    steps = {"no": "", "bf16": ", bf16 training steps" if sess.device.type == "cpu"
             else ", bf16 mixed precision", "fp16": ", fp16 mixed precision"}[precision]
    return (f"{cfg.source}: {len(data.table.refs) - n_valid} train / {n_valid} valid images, "
            f"{len(data.vocab)} classes ({kind}){skipped}; {cfg.arch} at {cfg.size}px, "
            f"{sess.batch_sizes(cfg.bs)}{steps}, pixels from the {pixels}{start}")


def _write_run(learn: Learner, data: PreparedData) -> None:
    rec = learn.easycls
    run_dir = rec.run_dir
    save(learn, run_dir)
    write_json(run_dir / "metrics.json", rec.metrics)
    rec.config.to_json(run_dir / "config.json")
    plot_history(run_dir / "history.csv", run_dir / "loss.png")
    if rec.multi_label:
        _write_threshold_report(rec)
    else:
        _write_confusion(rec)
    if data.table.skipped:
        write_skipped(run_dir / "skipped.txt", data.table.skipped)
    cfg = rec.config
    recipe = get_recipe(cfg.source) if is_recipe(cfg.source) else None
    after_fit = recipe.after_fit if recipe is not None else None  # test scores, submissions
    if not (data.table.test_refs or after_fit):
        return
    # One load and one pass over the test images, for test_predictions.csv and the recipe
    # (the time budget reserved one pass).
    predictor, test = load(run_dir), None
    if data.table.test_refs:
        test = decisions(predictor, data.table.test_refs)
        write_predictions(predictor, data.table.test_refs, run_dir / "test_predictions.csv",
                          decided=test)
    if after_fit is not None:
        after_fit(run_dir, predictor, data.table, test)


def _write_threshold_report(rec: RunRecord) -> None:
    probs, targets = rec.valid_preds[0].numpy(), rec.valid_preds[1].numpy() > 0.5
    tuned = rec.metrics["thresholds"]
    plot_f1_threshold(probs, targets, tuned, rec.run_dir / "f1_threshold.png")
    rows = per_class_report(probs, targets, tuned["per_class"])
    write_per_class(rec.run_dir / "per_class.csv",
                    [{**row, "class": name} for row, name in zip(rows, rec.vocab)])


def _write_confusion(rec: RunRecord) -> None:
    plot_confusion(rec.confusion, rec.vocab, rec.run_dir / "confusion_matrix.png")
