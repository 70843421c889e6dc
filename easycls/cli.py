"""The `easycls` command line. Each command validates its arguments and calls one library
function."""

from __future__ import annotations

import atexit
import gc
import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from . import __version__, config, errors


class _Boundary(TyperGroup):
    """Every command (and sub-command) runs inside the one error boundary: an error of the
    user's input, files or environment (`errors.explain`) is one line and a non-zero exit;
    a bug keeps its traceback; ``--debug`` or ``EASYCLS_DEBUG=1`` shows it for both."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:
            said = errors.explain(e)
            if said is None or _debugging():
                raise
            _fail(said[0], said[1])


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  cls=_Boundary,
                  help="Train a good image classifier in one command (fastai + timm + Accelerate).")

# Option types shared by several commands, defined once.
RunDir = Annotated[Path, typer.Argument(help="Run directory written by `easycls fit`.", exists=True,
                                        file_okay=False)]
Threshold = Annotated[
    float | None,
    typer.Option(
        help="Multi-label decision threshold for every class "
        "(default: the tuned thresholds in model.json)."
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"easycls {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    debug: Annotated[bool, typer.Option(
        "--debug", help=f"Show the full traceback of any error (also {errors.DEBUG_ENV}=1).")
    ] = False,
) -> None:
    _flags["debug"] = debug


_flags = {"debug": False}  # this invocation's --debug (the callback runs on each one)


def _debugging() -> bool:
    return _flags["debug"] or errors.debugging()


def _fail(e: Exception | str, code: int = 2, launched: bool = True) -> None:
    """One red line and exit `code`. `launched=False`: a command no launcher starts in several
    processes (serve), which then imports nothing of torch to say so."""
    if isinstance(e, Exception) and _debugging():
        raise e  # --debug: the traceback, also of the errors a command catches itself
    if launched and "easycls.distributed" in sys.modules:  # a launch exists once imported
        from .distributed import Session, leaving_on_error
        leaving_on_error()  # under a launcher: leave without waiting for the other processes
        if not Session.of_launch().is_main:  # every process hits the same error: say it once
            raise typer.Exit(code)
    typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _option_type(name: str) -> Any:
    """The annotated CLI type of a TrainConfig option (its metadata says how to spell it)."""
    meta = config.TrainConfig.__dataclass_fields__[name].metadata
    if name == "source":
        return Annotated[str | None, typer.Argument(metavar="SOURCE", help=config.option_help(name)
                                                    + " Not needed with --resume.")]
    base = config.base_type(name)
    decls = meta["flag"].split(",") if meta["flag"] else []
    if meta["kind"] in ("path", "file"):
        base = Path
    if meta["kind"] in ("duration", "lr"):
        base = str
    extra = dict(exists=True, dir_okay=False) if meta["kind"] == "file" else {}
    if meta["kind"] == "list":  # repeated: --log wandb --log mlflow
        base, extra = list[str], dict(metavar="<str>")
    return Annotated[base | None, typer.Option(*decls, help=config.option_help(name), **extra)]


def _fit_signature() -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, default=None, annotation=_option_type(n))
              for n in config.OPTIONS]
    resume = Annotated[Path | None, typer.Option(
        help="Continue the run in this directory from its checkpoint.pth; only "
        f"{', '.join(config.RESUMABLE)} may change. On several machines, only rank 0's needs "
        "the directory.")]
    return inspect.Signature(params + [inspect.Parameter("resume", kind, default=None,
                                                         annotation=resume)])


def fit_cmd(source: str | None = None, resume: Path | None = None, **settings: Any) -> None:
    """Train a classifier on SOURCE and write a run directory."""
    from .budget import counting_from_process_start
    from .train import fit
    # Errors (a full disk: status 1; a signal after its checkpoint: 128 + signal; bad options
    # or data: 2) are the app's error boundary's to show.
    with counting_from_process_start():  # `--time-budget 2m`: the command ends within 2 min
        fit(source, resume=resume, **settings)


# The options of `easycls fit` are TrainConfig's fields: declared once, in config.py.
fit_cmd.__signature__ = _fit_signature()
app.command("fit")(fit_cmd)


@app.command("predict")
def predict_cmd(
    run_dir: RunDir,
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    csv: Annotated[Path | None, typer.Option(help="Write predictions to this CSV.")] = None,
    bs: Annotated[int, typer.Option(min=1, help="Batch size.")] = 64,
    threshold: Threshold = None,
    submission: Annotated[
        str | None,
        typer.Option(
            help="Write a competition file instead: auto, "
            "multilabel (ImageID,Labels), single "
            "(id,label), or 'IDCOL,LABELCOL'."
        ),
    ] = None,
    order: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="CSV whose id column sets the submission rows and order (e.g. test.csv).",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Show the K most probable classes of "
            "each image, with their probabilities, "
            "instead of the decision.",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with status 3 when some inputs "
            "could not be read (the others are "
            "still predicted).",
        ),
    ] = False,
) -> None:
    """Label images with a trained model (a table with a header, or --csv)."""
    from .bundle import expand_inputs, load
    from .predict import predict_files, prediction_fields, write_predictions, write_submission
    try:
        refs = expand_inputs(inputs)
    except FileNotFoundError as e:
        _fail(e)
    if not refs:
        _fail(ValueError(f"no images found in {', '.join(map(str, inputs))}"))
    try:
        predictor = load(run_dir)
    except (ValueError, FileNotFoundError) as e:  # BundleError: a damaged or crafted model.json
        _fail(e)
    if submission or order:
        out = csv or Path("submission.csv")
        try:
            n, unreadable = write_submission(
                predictor, refs, out, submission or "auto", order, bs, threshold
            )
        except (ValueError, FileNotFoundError) as e:
            _fail(e)
        typer.echo(f"wrote {n} rows to {out}")
        for x, reason in unreadable.items():
            typer.secho(f"unreadable {x} (empty label): {reason}", err=True, fg=typer.colors.YELLOW)
        return
    if csv:
        rows, bad = write_predictions(predictor, refs, csv, bs, threshold, top_k)
        typer.echo(f"wrote {len(rows)} predictions to {csv}")
    else:
        rows, bad = predict_files(predictor, refs, bs, threshold, top_k)
        typer.echo("\t".join(prediction_fields(predictor, top_k)))
        from .safeio import one_field
        for row in rows:
            typer.echo("\t".join(one_field(v) for v in row.values()))
    for i, reason in sorted(bad.items()):
        typer.secho(f"skipped {refs[i]}: {reason}", err=True, fg=typer.colors.YELLOW)
    if strict and bad:
        typer.secho(f"error: {len(bad)} of {len(refs)} inputs could not be read", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(3)


@app.command("evaluate")
def evaluate_cmd(
    run_dir: RunDir,
    source: Annotated[
        str | None,
        typer.Argument(
            help="Labelled data: folder, .zip, CSV or dataset name (default: the run's own data)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default RUN_DIR/eval-<source>).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="auto (the validation split if any), valid, all or test.")
    ] = "auto",
    images: Annotated[Path | None, typer.Option(help="Image folder for a CSV source.")] = None,
    bs: Annotated[int, typer.Option(min=1, help="Batch size.")] = 64,
    quiet: Quiet = False,
) -> None:
    """Score a trained model on labelled data: per-class table, confusion matrix or F1 curves."""
    from .data.items import DataError
    from .data.tables import TableError
    from .evaluate import evaluate
    try:
        evaluate(run_dir, source, out, split=split, images=images, bs=bs, quiet=quiet)
    except (DataError, TableError, ValueError, FileNotFoundError) as e:
        _fail(e)


@app.command("check")
def check_cmd(
    source: Annotated[str, typer.Argument(
        help="Data as `fit` takes it: folder, split folders, .zip, CSV or dataset name.")],
    images: Annotated[Path | None, typer.Option(help="Image folder for a CSV source.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Report folder (default checks/<data>-<time>).")] = None,
    labels: Annotated[bool, typer.Option(
        "--labels", help="Also rank likely label errors, from out-of-fold probabilities of "
        "short cross-validated runs.")] = False,
    run: Annotated[Path | None, typer.Option(
        exists=True, file_okay=False, help="Rank likely label errors with this run's model "
        "instead (it has seen its training images). A run directory given as SOURCE does "
        "the same on the run's data.")] = None,
    label_model: Annotated[str, typer.Option(
        help="Out-of-fold model for --labels: linear (over image features, seconds) or cnn "
        "(a small CNN per fold, from scratch; minutes).")] = "linear",
    label_budget: Annotated[str, typer.Option(
        help="Time ceiling of the cnn folds, all together (90s, 5m).")] = "5m",
    max_distance: Annotated[int, typer.Option(
        min=0, max=32, help="Perceptual-hash bits two near-duplicates may differ by.")] = 10,
    quiet: Quiet = False,
) -> None:
    """Find duplicates, train/valid/test leakage, unreadable or odd images, class imbalance
    and (with --labels) likely label errors; write check.json, check.md and a grid of the
    worst cases."""
    from .check import check
    from .data.items import DataError
    from .data.tables import TableError
    try:
        seconds = config.parse_duration(label_budget)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--label-budget") from e
    if label_model not in ("linear", "cnn"):
        raise typer.BadParameter(f"{label_model!r}: use linear or cnn",
                                 param_hint="--label-model")
    try:
        check(source, images=images, out=out, labels=labels, run=run, label_model=label_model,
              label_seconds=seconds, max_distance=max_distance, progress=not quiet)
    except (DataError, TableError, FileNotFoundError, ImportError) as e:
        _fail(e)


@app.command("thresholds")
def thresholds_cmd(
    run_dir: RunDir,
    source: Annotated[
        str, typer.Argument(help="Labelled data (CSV, folder, zip or dataset name).")
    ],
    images: Annotated[Path | None, typer.Option(help="Image folder for a CSV source.")] = None,
    average: Annotated[
        str | None, typer.Option(help="F1 average to maximize: samples, micro or macro.")
    ] = None,
) -> None:
    """Recompute a multi-label model's F1-optimal thresholds on SOURCE and store them in the
    bundle."""
    from .data.items import DataError
    from .data.tables import TableError
    from .retune import retune_thresholds
    if average not in (None, "samples", "micro", "macro"):
        _fail(ValueError(f"--average must be samples, micro or macro, not {average!r}"))
    try:
        tuned = retune_thresholds(run_dir, source, str(images) if images else None, average)
    except (DataError, TableError, ValueError) as e:
        _fail(e)
    f1 = tuned["f1"]
    typer.echo(f"thresholds ({tuned['chosen']}, global {tuned['global']:.4f}): F1 "
               f"{tuned['average']} {f1['tuned']:.4f} (at 0.5: {f1['at_0.5']:.4f}) on "
               f"{tuned['tuned_on']['images']} images; updated {run_dir / 'model.json'}")


@app.command("archs")
def archs_cmd(
    pattern: Annotated[
        str, typer.Argument(help="Glob pattern, e.g. 'resnet*' or '*convnext*'.")
    ] = "*",
    pretrained: Annotated[bool, typer.Option(help="Only names with pretrained weights.")] = False,
) -> None:
    """List timm architecture names."""
    import timm
    names = timm.list_models(pattern if any(c in pattern for c in "*?[") else f"*{pattern}*",
                             pretrained=pretrained)
    for name in names:
        typer.echo(name)
    if not names:
        _fail(ValueError(f"no timm architecture matches {pattern!r}"))


@app.command("datasets")
def datasets_cmd() -> None:
    """List the named datasets: whether each was found and where, its size, what it is."""
    from .data.recipes import dataset_table
    rows = dataset_table()
    w = max(len(r["name"]) for r in rows)
    typer.echo(f"{'name':<{w}}  {'found':<8}  size / where / description")
    for r in rows:
        typer.echo(f"{r['name']:<{w}}  {r['found']:<8}  {r['size']}")
        typer.echo(f"{'':<{w}}  {'':<8}  {r['where'] or 'get it: ' + r['download']}")
        typer.echo(f"{'':<{w}}  {'':<8}  {r['description']}")


@app.command("bench")
def bench_cmd(
    source: Annotated[
        str | None,
        typer.Argument(help="Data as for `fit` (default: a generated synthetic folder)."),
    ] = None,
    arch: Annotated[str, typer.Option(help="Any timm model name.")] = "resnet18",
    size: Annotated[int, typer.Option(min=8, help="Image size in pixels.")] = 64,
    bs: Annotated[int, typer.Option(min=1, help="Batch size per process.")] = 64,
    processes: Annotated[
        str, typer.Option(help="Process counts for the end-to-end runs, e.g. 1,2,4.")
    ] = "1",
    steps: Annotated[int, typer.Option(min=1, help="Timed training steps on synthetic data.")] = 20,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of each end-to-end run.")] = 1,
    lr: Annotated[
        float, typer.Option(min=0.0, help="Learning rate of the end-to-end runs.")
    ] = 2e-3,
    out: Annotated[Path, typer.Option(help="Folder for bench.json and bench.png.")] = Path("bench"),
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (train step).")
    ] = False,
    time_budget: Annotated[str | None, typer.Option(
        help="Scaling at a fixed wall time (90s, 30m, 2h): each process count trains for this "
        "long; epochs reached, images/s, accuracy and efficiency (--epochs and --steps unused)."
    )] = None,
) -> None:
    """Images/s of the training step, the input pipeline and end to end; DDP scaling."""
    from .bench import bench
    seconds = None
    if time_budget is not None:
        try:
            seconds = config.parse_duration(time_budget)
        except ValueError as e:
            _fail(ValueError(f"--time-budget: {e}"))
    try:
        counts = [int(p) for p in processes.split(",") if p.strip()]
    except ValueError:
        _fail(ValueError(f"--processes takes comma-separated counts like 1,2,4, not {processes!r}"))
    if not counts or min(counts) < 1:
        _fail(ValueError(f"--processes needs counts >= 1, not {processes!r}"))
    try:
        bench(source, arch=arch, size=size, bs=bs, processes=counts, steps=steps, epochs=epochs,
              lr=lr, out=out, compile=compile, time_budget=seconds, say=typer.echo)
    except RuntimeError as e:  # a run of `easycls fit` failed: its own last line, and its log
        _fail(e, 1)


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(
        help="Run directories (globs like runs/asl-* work), or folders of runs.")],
    out: Annotated[Path, typer.Option(
        help="Folder for compare.md, compare.csv and compare.png.")] = Path("compare"),
) -> None:
    """Runs side by side: one table row per run, validation curves, final metric vs time."""
    from .compare import NoRuns, compare_runs
    try:
        compare_runs(runs, out, say=typer.echo)
    except NoRuns as e:
        _fail(e, launched=False)
    typer.echo(f"wrote {out / 'compare.md'}, compare.csv and compare.png")


@app.command("export")
def export_cmd(
    run_dir: RunDir,
    format: Annotated[str, typer.Option(
        "--format", help="onnx (with a torch-free predict.py), torchscript, or pt2 (a "
        "torch.export ExportedProgram).")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default RUN_DIR/FORMAT).")] = None,
    quantize: Annotated[str | None, typer.Option(
        help="int8: also write model_int8.onnx for CPUs (static quantization calibrated on the "
        "run's training images; dynamic without them).")] = None,
    min_agreement: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Least top-1 agreement of the int8 model with the float one on "
        "the validation images, or it is not kept.")] = 0.99,
) -> None:
    """Write the model as ONNX, TorchScript or ExportedProgram, checked against PyTorch."""
    from .export import ExportError, export
    try:
        r = export(run_dir, out, format=format, quantize=quantize, min_agreement=min_agreement)
    except (ExportError, ImportError, ValueError) as e:
        _fail(e)
    if r.note:
        typer.echo(f"note: {r.note}")
    wrote = ", ".join(str(p) for p in (r.model, r.script, r.readme) if p is not None)
    label = {"onnx": "ONNX", "torchscript": "TorchScript", "pt2": "ExportedProgram"}[r.format]
    typer.echo(f"wrote {wrote}; max |{label} - PyTorch| = {r.max_diff:.2g} "
               f"on {r.checked} {r.checked_on} images")
    if (q := r.quantized) is not None:
        how = (f"static, calibrated on {q.calibrated_on} training images"
               if q.method == "static" else "dynamic: the run's training images are not at hand")
        typer.echo(f"wrote {q.path} ({how}); top-1 agreement with the float model "
                   f"{q.agreement:.2%} on {q.compared_on} {q.compared_kind} images; "
                   f"{q.int8_images_per_s:.0f} vs {q.float_images_per_s:.0f} images/s on this "
                   f"machine: {q.speedup:.2f}x")


@app.command("serve")
def serve_cmd(
    run_dir: Annotated[Path, typer.Argument(
        help="Run directory written by `easycls fit`, or a folder written by `easycls export`.",
        exists=True, file_okay=False)],
    onnx: Annotated[bool, typer.Option(
        "--onnx", help="Serve RUN_DIR/onnx/model.onnx on onnxruntime, without torch (an "
        "export folder is served so anyway).")] = False,
    host: Annotated[str, typer.Option(
        help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    token: Annotated[str | None, typer.Option(
        help="Require 'Authorization: Bearer TOKEN' for the API.")] = None,
    max_batch: Annotated[int, typer.Option(
        min=1, help="Images per forward pass; 1 turns batching off.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        min=0.0, help="How long a batch waits for more requests.")] = 5.0,
    max_mb: Annotated[float, typer.Option(
        min=0.01, help="Largest request body in MB (larger: 413).")] = 10.0,
    max_megapixels: Annotated[float, typer.Option(
        min=0.01, help="Largest image in decoded megapixels, read from its header (larger: "
        "413); a request may bring 4 times that in all, and decodes in flight across "
        "requests hold at most that much at once.")] = 90.0,
) -> None:
    """Serve a model: a web page to try it and a REST API (POST /predict, GET /model, /docs)."""
    try:
        from .serve import serve
    except ImportError as e:
        _fail(ImportError(f"serve needs FastAPI and uvicorn: pip install 'easycls[serve]' ({e})"),
              launched=False)
    try:
        serve(run_dir, host, port, onnx=onnx, token=token, max_batch=max_batch,
              max_wait_ms=max_wait_ms, max_mb=max_mb, max_megapixels=max_megapixels,
              say=typer.echo)
    except (FileNotFoundError, ImportError) as e:
        _fail(e, launched=False)


cache_app = typer.Typer(no_args_is_help=True, help="List or clear the decoded-image caches and "
                        "compact stores (in $EASYCLS_CACHE, default ~/.cache/easycls).")
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list_cmd() -> None:
    """Each cache and store: key, kind, images, size, last use, source; and the total."""
    from .data import cachedir
    typer.echo(cachedir.format_entries(cachedir.entries()))


@cache_app.command("clear")
def cache_clear_cmd(
    keys: Annotated[list[str] | None, typer.Argument(
        help="Start(s) of the keys to clear, as `easycls cache list` shows them (default: all).")
    ] = None,
    older_than: Annotated[str | None, typer.Option(
        help="Only entries unused for this long (7d, 12h, 30m).")] = None,
) -> None:
    """Delete caches and stores (never one being built right now)."""
    from .data import cachedir
    seconds = None
    if older_than is not None:
        try:
            seconds = config.parse_duration(older_than)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
    gone = cachedir.clear(older_than=seconds, keys=keys or None)
    freed = sum(e.bytes for e in gone) / 1e9
    typer.echo(f"removed {len(gone)} entries ({freed:.2f} GB) from {cachedir.cache_root()}")


def main() -> None:
    """Console-script entry point (also `python -m easycls`)."""
    # Registered before any tracker starts, so it runs after their exit handlers: the
    # interpreter's teardown then skips collecting the objects that torch, fastai and pandas
    # made, which took 1.5 s of every command's exit. Freezing only moves objects out of the
    # collector's reach; handlers that run later (logging's) work as before.
    atexit.register(gc.freeze)
    app(prog_name="easycls")


if __name__ == "__main__":
    sys.exit(main())
