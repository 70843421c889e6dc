"""Experiment trackers a run reports to (`--log wandb --log mlflow`, `log="wandb,csv"`).

Each goes through fastai's own callback where fastai has one: `WandbCallback` (wandb),
`TensorBoardCallback` (tensorboard), `CSVLogger` (csv, `RUN_DIR/log.csv`). fastai has
none for MLflow: `MlflowCallback` here logs each trained epoch's losses and metrics. The
tracker's run is opened before training (a missing package or an unreachable tracking
store fails before any epoch) and closed when `fit` ends, with the final metrics as its
summary. Rank 0 only: `fit` opens trackers on the main process alone.

The ids of the runs opened are kept in `RUN_DIR/trackers.json`: `--resume` logs into the
same wandb run (`resume="allow"`) and the same MLflow run, its epochs after the first
session's.
"""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger

from .rundir import write_json
from .runlog import TrainedEpochs, epoch_record, tensorboard_callback

__all__ = ["TRACKERS", "IDS_FILE", "Trackers", "MlflowCallback", "TrainingCSVLogger",
           "flat_numbers"]

TRACKERS = ("wandb", "mlflow", "tensorboard", "csv")
IDS_FILE = "trackers.json"  # {"wandb": run id, "mlflow": run id} of the runs fit opened


def _need(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"--log {what} needs the {module} package: pip install "
                          f"'easycls[track]' (or pip install {module})") from e


def flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a nested dict, with keys joined by '/': what trackers log."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_numbers(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


class MlflowCallback(TrainedEpochs):
    """Each trained epoch's losses and metrics to the active MLflow run, as steps counted
    across `fine_tune`'s phases and resumed runs (`start`); lr_find, get_preds and validate
    are not epochs.

    Example:
        >>> with mlflow.start_run():
        ...     learn.fit_one_cycle(3, cbs=MlflowCallback())  # doctest: +SKIP
    """

    order = 51  # after fastai's Recorder (50) has filled `final_record`

    def __init__(self, start: int = 0):
        self.step = start

    def after_epoch(self):
        if self.trained:
            import mlflow
            values = {k: v for k, v in epoch_record(self.learn).items() if v is not None}
            mlflow.log_metrics(values, step=self.step)
            self.step += 1


class TrainingCSVLogger(CSVLogger):
    """fastai's `CSVLogger` (appending) that leaves lr_find and prediction passes out."""

    def before_fit(self):
        self.active = not (hasattr(self.learn, "lr_finder")
                           or hasattr(self.learn, "gather_preds"))
        if self.active:
            super().before_fit()

    def after_fit(self):
        if getattr(self, "active", False):
            super().after_fit()


class Trackers:
    """The trackers of one run: their callbacks, and their runs opened and closed.

    A context manager: leaving it ends each run this object started (as failed when an
    exception leaves it). `summary(metrics)` logs the final metrics first. `resumed`:
    continue the runs named in the run directory's `trackers.json`.

    Example:
        >>> with Trackers(["mlflow"], run_dir, config) as trackers:
        ...     learn.fit_one_cycle(1, cbs=trackers.callbacks)  # doctest: +SKIP
    """

    def __init__(self, names: list[str] | tuple = (), run_dir: str | Path = ".",
                 config: dict | None = None, start: int = 0, resumed: bool = False):
        self.callbacks: list[Callback] = []
        self._ends: list = []
        self._summaries: list = []
        self.run_dir, self.config, self.start = Path(run_dir), config or {}, start
        ids_file = self.run_dir / IDS_FILE
        self.ids: dict = json.loads(ids_file.read_text()) if resumed and ids_file.is_file() else {}
        known = dict(self.ids)
        for name in dict.fromkeys(names):
            getattr(self, f"_open_{name}")()
        if self.ids != known:
            write_json(ids_file, self.ids)

    def _open_wandb(self) -> None:
        wandb = _need("wandb", "wandb")
        from fastai.callback.wandb import WandbCallback
        started = wandb.run is None  # a run the user opened stays theirs to finish
        if started:
            run_id = self.ids.get("wandb") or uuid.uuid4().hex[:12]
            wandb.init(project="easycls", name=self.run_dir.name, dir=str(self.run_dir),
                       config=self.config, id=run_id, resume="allow")
            self.ids["wandb"] = run_id
        self.callbacks.append(WandbCallback(log_preds=False))
        self._summaries.append(lambda m: wandb.run.summary.update(m))
        if started:
            self._ends.append(lambda failed: wandb.finish(exit_code=int(failed)))

    def _open_mlflow(self) -> None:
        mlflow = _need("mlflow", "mlflow")
        started = mlflow.active_run() is None
        if started:
            run_id = self.ids.get("mlflow")
            try:
                mlflow.start_run(run_id=run_id, run_name=None if run_id else self.run_dir.name)
            except Exception as e:  # the store's own errors come in many types
                raise ImportError(f"--log mlflow: MLflow cannot open a run at "
                                  f"{mlflow.get_tracking_uri()} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0]}); set MLFLOW_TRACKING_URI") from e
            if run_id is None:  # a run's parameters are set once (MLflow refuses changes)
                mlflow.log_params({k: str(v)[:500] for k, v in self.config.items()
                                   if v not in (None, "", {}, [])})
            self.ids["mlflow"] = mlflow.active_run().info.run_id
        self.callbacks.append(MlflowCallback(self.start))
        # Under final/: the per-epoch series (valid_loss, accuracy) keep their own steps.
        self._summaries.append(lambda m: mlflow.log_metrics({f"final/{k}": v
                                                             for k, v in m.items()}))
        if started:
            self._ends.append(lambda failed: mlflow.end_run("FAILED" if failed else "FINISHED"))

    def _open_tensorboard(self) -> None:
        self.callbacks.append(tensorboard_callback(self.run_dir / "tensorboard"))

    def _open_csv(self) -> None:
        self.callbacks.append(TrainingCSVLogger(fname=str(self.run_dir / "log.csv"),
                                                append=True))

    def summary(self, metrics: dict) -> None:
        """Log the run's final metrics (metrics.json's numbers) to each tracker."""
        numbers = flat_numbers(metrics)
        for log in self._summaries:
            log(numbers)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind, value, tb) -> None:
        for end in self._ends:
            end(kind is not None)
        self._ends = []
