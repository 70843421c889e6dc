"""`fit()`: source -> data -> learner -> train -> run directory. The one orchestrator.

The module is `train`, not `fit`: a submodule named `fit` would replace the function
`easycls.fit` on the package as soon as it was imported.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.progress import ProgressCallback
from fastai.learner import Learner
from fastai.torch_core import set_seed

from . import distributed
from .budget import UNBOUNDED_EPOCHS, TimeBudget
from .bundle import save_bundle
from .callbacks import HistoryCSV, JsonEvents, L1Penalty, PlainTensors, tensorboard_callback
from .checkpoint import (
    Checkpointer,
    CheckpointError,
    load_checkpoint,
    plan_phases,
    run_phases,
    trim_history,
)
from .config import RECIPE_DEFAULTS, TrainConfig
from .data import cache as dcache
from .data.images import check_images
from .data.loaders import (
    ImageDataset,
    Pixels,
    default_workers,
    encode_labels,
    make_dataloaders,
    pixel_stats,
    train_store_size,
)
from .data.recipes import get_recipe, is_recipe
from .data.sources import DataError, ItemTable, from_path
from .learners import (
    arch_name,
    create_model,
    model_normalization,
    multi_label_learner,
    single_label_learner,
)
from .metrics import multi_label_metrics, single_label_metrics
from .report import format_metrics, plot_history

__all__ = ["fit", "resolve_config", "load_items", "save"]


def resolve_config(source: str, **settings: Any) -> TrainConfig:
    """TrainConfig from recipe defaults, then everything the user passed (None = not passed)."""
    given = {k: v for k, v in settings.items() if v is not None}
    base = TrainConfig(source=str(source))
    if is_recipe(str(source)):
        recipe = get_recipe(str(source))
        base = base.updated(**{k: v for k, v in recipe.defaults.items() if k in RECIPE_DEFAULTS})
        base.extra = {**recipe.extra, **base.extra}
    if "arch" in given and not isinstance(given["arch"], str):
        given["arch"] = arch_name(given["arch"])
    return base.updated(**given)


def load_items(cfg: TrainConfig) -> ItemTable:
    """The item table of a recipe name or a folder / zip / CSV path."""
    if is_recipe(cfg.source):
        return get_recipe(cfg.source).load(cfg)
    if not Path(cfg.source).exists():
        get_recipe(cfg.source)  # raises with the closest recipe names
    return from_path(cfg.source, cfg.images, cfg.label_delimiter)


def _random_split(n: int, valid_pct: float, seed: int) -> list[bool]:
    rng = np.random.default_rng(seed)
    is_valid = np.zeros(n, dtype=bool)
    is_valid[rng.permutation(n)[: max(1, int(round(n * valid_pct)))]] = True
    return is_valid.tolist()


def _pixels(refs: list[str], size: int, use_cache: bool, progress: bool) -> tuple[Pixels, dict[int, str]]:
    """Decoded pixels for `refs` plus the unreadable ones ({index: reason})."""
    if use_cache:
        built = dcache.load_or_build(refs, size, progress=progress)
        return Pixels(refs, size, built.array), dict(built.failures)
    return Pixels(refs, size), check_images(refs, progress=progress)


def _default_out(cfg: TrainConfig, table: ItemTable) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{table.name}-{cfg.arch.replace('/', '_').replace(':', '_')}-{stamp}"


class _Data:
    """Everything derived from the item table: vocab, targets, pixels per split."""

    def __init__(self, table: ItemTable, cfg: TrainConfig, progress: bool = False):
        self.progress = progress  # decode/cache progress: rank 0 only, and not when quiet
        if table.is_valid is None:
            table.is_valid = _random_split(len(table.refs), cfg.valid_pct, cfg.seed)
        table.check()
        self.table, self.cfg = table, cfg
        self.multi_label = table.multi_label if cfg.multi_label is None else cfg.multi_label
        if not self.multi_label and table.multi_label:  # never drop labels silently
            n = sum(len(labs) != 1 for labs in table.labels)
            raise DataError(f"multi_label=False, but {n} images of {cfg.source} have several (or no) labels; "
                            "drop --single-label to train a multi-label model")
        self.use_cache = cfg.cache if cfg.cache is not None else dcache.fits_budget(len(table.refs), train_store_size(cfg.size, cfg.augment))
        self._decode()
        self.vocab = table.classes

    def _split_refs(self, valid: bool) -> list[int]:
        return [i for i, v in enumerate(self.table.is_valid) if v == valid]

    def _decode(self) -> None:
        cfg, bad = self.cfg, {}
        store = train_store_size(cfg.size, cfg.augment)
        tr, va = self._split_refs(False), self._split_refs(True)
        self.train_px, f_tr = _pixels([self.table.refs[i] for i in tr], store, self.use_cache, self.progress)
        self.valid_px, f_va = _pixels([self.table.refs[i] for i in va], cfg.size, self.use_cache, self.progress)
        bad.update({tr[j]: r for j, r in f_tr.items()})
        bad.update({va[j]: r for j, r in f_va.items()})
        # Keep only readable items; cached arrays keep their rows, so index through them.
        self.train_rows = [j for j in range(len(tr)) if j not in f_tr]
        self.valid_rows = [j for j in range(len(va)) if j not in f_va]
        self.table.drop(bad)
        self.table.check()

    def datasets(self) -> tuple[ImageDataset, ImageDataset]:
        labels = self.table.labels
        tr_lab = [labels[i] for i in self._split_refs(False)]
        va_lab = [labels[i] for i in self._split_refs(True)]
        y_tr = encode_labels(tr_lab, self.vocab, self.multi_label)
        y_va = encode_labels(va_lab, self.vocab, self.multi_label)
        return (ImageDataset(_rows(self.train_px, self.train_rows), y_tr, self.multi_label, 0),
                ImageDataset(_rows(self.valid_px, self.valid_rows), y_va, self.multi_label, 1))


def _rows(px: Pixels, rows: list[int]) -> Pixels:
    if len(rows) == len(px):
        return px
    return Pixels([px.refs[r] for r in rows], px.size, None if px.array is None else px.array[rows])


def _build_learner(data: _Data, cfg: TrainConfig, arch, sess, run_dir: Path, history_start: int = 0) -> Learner:
    model = create_model(arch, len(data.vocab), cfg.pretrained, cfg.weights, cfg.ps)
    train_ds, valid_ds = data.datasets()
    norm = model_normalization(model) if (cfg.pretrained or cfg.weights) else None
    mean, std = norm or pixel_stats(train_ds.pixels, seed=cfg.seed)
    workers = cfg.workers if cfg.workers is not None else default_workers(cached=data.use_cache)
    dls = make_dataloaders(train_ds, valid_ds, size=cfg.size, bs=cfg.bs, mean=mean, std=std,
                           augment=cfg.augment, flip=cfg.extra.get("flip", True),
                           workers=workers,
                           device=sess.device, seed=cfg.seed)
    cbs = [PlainTensors()] + ([L1Penalty(cfg.l1)] if cfg.l1 else []) + sess.train_callbacks(cfg)
    cbs += sess.main_only([HistoryCSV(run_dir / "history.csv", start=history_start)]
                          + ([JsonEvents(cfg.log_json)] if cfg.log_json else [])
                          + ([tensorboard_callback(run_dir / "tensorboard")] if cfg.tensorboard else []))
    kw = dict(pretrained=cfg.pretrained, weights=cfg.weights, wd=cfg.wd, cbs=cbs, path=run_dir)
    if data.multi_label:
        pos_weight = _pos_weight(train_ds.targets) if cfg.class_weights == "auto" else None
        learn = multi_label_learner(dls, model, len(data.vocab), pos_weight=pos_weight, **kw)
    else:
        learn = single_label_learner(dls, model, len(data.vocab), label_smoothing=cfg.label_smoothing, **kw)
    learn.normalization = (list(mean), list(std))
    if cfg.compile:
        learn.model = torch.compile(learn.model)
    if cfg.quiet or not sess.is_main:
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *a, **k: None
    return learn


def _pos_weight(targets: np.ndarray) -> torch.Tensor:
    pos = targets.sum(0)
    return torch.tensor((len(targets) - pos) / np.maximum(pos, 1), dtype=torch.float32)


def _pick_lr(learn: Learner, cfg: TrainConfig, say, sess) -> float:
    if cfg.lr is not None:
        return cfg.lr
    with sess.alone():  # each process probes on its own (fastai's lr_find is single-process)
        suggestion = learn.lr_find(show_plot=False)
    lr = sess.agree(float(suggestion.valley))  # every process trains with rank 0's choice
    say(f"lr_find picked lr={lr:.2e}")
    return lr


def _train(learn: Learner, cfg: TrainConfig, sess, meta: dict, t_start: float, state: dict | None) -> dict:
    """fine_tune or fit_one_cycle, checkpointed and resumable; under a time budget the last
    phase's epochs are planned by `TimeBudget`. Returns the budget facts for metrics.json."""
    lr = cfg.lr * (sess.world_size if cfg.scale_lr else 1)
    phases = plan_phases(bool(cfg.pretrained or cfg.weights), cfg.epochs, lr, cfg.freeze_epochs)
    budget = None
    if cfg.time_budget:
        guess = state["n_epoch"] if state and state["phase"] == len(phases) - 1 else cfg.epochs
        budget = TimeBudget(cfg.time_budget, t_start, guess, agree=sess.agree)
    ckpt = Checkpointer(Path(cfg.out), sess, meta, cfg.checkpoint_minutes, t_start)
    run_phases(learn, phases, ckpt, resume=state, last_phase_cbs=[budget] if budget else None,
               last_phase_epochs=UNBOUNDED_EPOCHS if budget else None)
    return dict(time_budget_seconds=cfg.time_budget, planned_epochs=budget.planned) if budget else {}


def _resumed_config(resume: str | Path, overrides: dict) -> TrainConfig:
    """The config.json of the run to continue; only output settings may change."""
    path = Path(resume) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{resume} holds no config.json: give the run directory of the run to continue")
    keep = {k: v for k, v in overrides.items() if k in ("quiet", "workers", "log_json") and v is not None}
    return TrainConfig.from_json(path).updated(out=str(resume), **keep)


def _final_metrics(learn: Learner, data: _Data, cfg: TrainConfig) -> dict:
    probs, targets = learn.get_preds(ds_idx=1)
    learn.valid_preds = (probs, targets)  # for the plots and tables written with the run
    if data.multi_label:
        return multi_label_metrics(probs, targets, cfg.threshold_average)
    return single_label_metrics(probs, targets)


def fit(source: str | None = None, arch: Any = None, epochs: int | None = None, lr: float | None = None,
        bs: int | None = None, size: int | None = None, pretrained: bool | None = None,
        weights: str | None = None, valid_pct: float | None = None, seed: int | None = None,
        out: str | None = None, resume: str | None = None, **overrides: Any) -> Learner:
    """Train an image classifier and write its run directory.

    Args:
        source: a folder (class folders or train/valid split folders), a .zip, a CSV of
            labels (with `images=`), or a dataset name (`easycls datasets` lists them).
        arch: a timm model name, an `nn.Module`, or a callable `n_classes -> nn.Module`.
        epochs, lr, bs, size: training length, learning rate (None: lr_find), batch size
            per process, image size. A recipe's defaults fill what is not given.
        pretrained: fine-tune ImageNet weights (True) or train from scratch (False).
        weights: a local timm-compatible weights file.
        valid_pct, seed: random validation share (when the data has no split) and seed.
        out: run directory (default `runs/<source>-<arch>-<time>`).
        resume: a run directory to continue from its `checkpoint.pth`, with its `config.json`.
        **overrides: any other `TrainConfig` field (wd, l1, ps, label_smoothing, ...).

    Returns:
        The trained fastai Learner, with `learn.run_dir` and `learn.final_metrics`.

    Example:
        >>> learn = fit("digits")
        >>> learn.final_metrics["accuracy"]
    """
    if resume is not None:
        cfg = _resumed_config(resume, overrides)
    else:
        cfg = resolve_config(source, arch=arch, epochs=epochs, lr=lr, bs=bs, size=size, pretrained=pretrained,
                             weights=weights, valid_pct=valid_pct, seed=seed, out=out, **overrides)
    arch_obj = arch if arch is not None and not isinstance(arch, str) else cfg.arch
    sess = distributed.session()
    say = print if (sess.is_main and not cfg.quiet) else (lambda *a, **k: None)
    set_seed(cfg.seed)
    t_start = time.perf_counter()
    data = _Data(load_items(cfg), cfg, progress=sess.is_main and not cfg.quiet)
    run_dir = Path(cfg.out) if cfg.out else _default_out(cfg, data.table)
    cfg = cfg.updated(out=str(run_dir))
    sess.on_main(lambda: run_dir.mkdir(parents=True, exist_ok=True))
    say(_summary(data, cfg, sess))
    state = load_checkpoint(run_dir, arch=cfg.arch, classes=data.vocab) if resume is not None else None
    if state is not None:  # the budget and train_seconds count the time before the stop too
        t_start -= state["elapsed"]
        sess.on_main(lambda: trim_history(run_dir / "history.csv", state["history_rows"]))
    learn = _build_learner(data, cfg, arch_obj, sess, run_dir, state["history_rows"] if state else 0)
    cfg = cfg.updated(lr=_pick_lr(learn, cfg, say, sess))
    sess.on_main(lambda: cfg.to_json(run_dir / "config.json"))  # before training: --resume reads it
    t_train = time.perf_counter() - (state["elapsed"] if state else 0.0)
    meta = dict(arch=cfg.arch, classes=data.vocab)
    budget_facts = _train(learn, cfg, sess, meta, t_start, state)
    train_seconds = time.perf_counter() - t_train
    metrics = {**_final_metrics(learn, data, cfg), "train_seconds": round(train_seconds, 3),
               "total_seconds": round(time.perf_counter() - t_start, 3), **budget_facts}
    learn.run_dir, learn.final_metrics, learn.vocab_ = run_dir, metrics, data.vocab
    learn.bundle_meta = dict(arch=cfg.arch, classes=data.vocab, size=cfg.size, mean=learn.normalization[0],
                             std=learn.normalization[1], multi_label=data.multi_label,
                             thresholds=metrics.get("thresholds"))
    sess.on_main(lambda: _write_run(learn, data, cfg, metrics))
    say(f"done: {format_metrics(metrics)}\nrun directory: {run_dir}")
    return learn


def _summary(data: _Data, cfg: TrainConfig, sess) -> str:
    n_valid = sum(data.table.is_valid)
    kind = "multi-label" if data.multi_label else "single-label"
    skipped = f", {len(data.table.skipped)} unreadable skipped" if data.table.skipped else ""
    return (f"{cfg.source}: {len(data.table.refs) - n_valid} train / {n_valid} valid images, "
            f"{len(data.vocab)} classes ({kind}){skipped}; {cfg.arch} at {cfg.size}px, "
            f"{sess.batch_sizes(cfg.bs)}, {'cached' if data.use_cache else 'decoded'} pixels")


def save(learn: Learner, out: str | Path) -> Path:
    """Save a Learner returned by `fit` as a safe bundle (model.safetensors + model.json)."""
    return save_bundle(learn.model, out, **learn.bundle_meta)


def _write_run(learn: Learner, data: _Data, cfg: TrainConfig, metrics: dict) -> None:
    run_dir = learn.run_dir
    save(learn, run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cfg.to_json(run_dir / "config.json")
    plot_history(run_dir / "history.csv", run_dir / "loss.png")
    if data.multi_label:
        _write_threshold_report(run_dir, learn.valid_preds, metrics["thresholds"], data.vocab)
    else:
        _write_confusion(run_dir, learn.valid_preds, data.vocab)
    if data.table.skipped:
        lines = [f"{ref}\t{reason}" for ref, reason in data.table.skipped]
        (run_dir / "skipped.txt").write_text("\n".join(lines) + "\n")
    if data.table.test_refs:
        _predict_test(run_dir, data.table.test_refs)
    recipe = get_recipe(cfg.source) if is_recipe(cfg.source) else None
    if recipe is not None and recipe.after_fit is not None:  # test scores, Kaggle submissions
        from .bundle import load
        recipe.after_fit(run_dir, load(run_dir), data.table)


def _write_threshold_report(run_dir: Path, preds, tuned: dict, classes: list[str]) -> None:
    from . import thresholds as th
    from .report import plot_f1_threshold, write_per_class
    probs, targets = preds[0].numpy(), preds[1].numpy() > 0.5
    plot_f1_threshold(probs, targets, tuned, run_dir / "f1_threshold.png")
    write_per_class(th.per_class_report(probs, targets, tuned["per_class"]), classes, run_dir / "per_class.csv")


def _write_confusion(run_dir: Path, preds, classes: list[str]) -> None:
    from .evaluate import confusion_matrix
    from .report import plot_confusion
    probs, targets = preds
    cm = confusion_matrix(targets.numpy(), probs.argmax(1).numpy(), len(classes))
    plot_confusion(cm, classes, run_dir / "confusion_matrix.png")


def _predict_test(run_dir: Path, refs: list[str]) -> None:
    from .bundle import load
    from .predict import write_predictions
    predictor = load(run_dir)
    write_predictions(predictor, refs, run_dir / "test_predictions.csv")
