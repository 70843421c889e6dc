"""TrainConfig is the one list of options: the CLI and `fit` are built from it and checked by it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer
from typer.testing import CliRunner

import easycls
from easycls import config
from easycls.cli import app
from easycls.config import ConfigError, TrainConfig
from easycls.distributed import PrecisionError
from easycls.learners import ArchError
from easycls.train import _resumed_config, resolve_config

runner = CliRunner()


def _cli_fit_params() -> set[str]:
    command = typer.main.get_command(app).commands["fit"]
    return {p.name for p in command.params}


def test_cli_options_fit_keywords_and_config_fields_are_one_set():
    # extra and fastai are records that fit fills, not options
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra", "fastai"}
    assert set(config.OPTIONS) == fields
    assert _cli_fit_params() == fields | {"resume"}
    sig = inspect.signature(easycls.fit)
    # items: the source of a DataBlock given as `source` (fit(block, path))
    assert list(sig.parameters) == ["source", "items", "resume", "settings"]
    assert sig.parameters["settings"].kind is inspect.Parameter.VAR_KEYWORD
    for name in fields - {"source"}:  # every option is a keyword `fit` accepts (None: not given)
        value = getattr(TrainConfig(), name)
        cfg = resolve_config("digits", **{name: value})
        assert value is None or getattr(cfg, name) == value


def test_every_option_has_help_and_the_help_shows_its_range():
    for name in config.OPTIONS:
        assert config.option_help(name)
    assert "[>= 1 and <= 100000]" in config.option_help("epochs")
    result = runner.invoke(app, ["fit", "--help"], terminal_width=200)
    assert "--label-delimiter" in result.output and "--threshold-average" in result.output


@pytest.mark.parametrize("settings, named, says", [
    (dict(epochs=0), "epochs", ">= 1"),
    (dict(epochs=99999999999999999999), "epochs", "<= 100000"),
    (dict(epochs="3"), "epochs", "must be an int, not str"),
    (dict(epochs=2.0), "epochs", "must be an int, not float"),
    (dict(lr=-1), "lr", "> 0"),
    (dict(lr=float("nan")), "lr", "finite"),
    (dict(pretrained="no"), "pretrained", "must be a bool"),
    (dict(valid_pct=0), "valid_pct", ">= 0.01"),
    (dict(bs=0), "bs", ">= 1"),
    (dict(size=-1), "size", ">= 8"),
    (dict(size="32"), "size", "must be an int"),
    (dict(arch=123), "arch", "nn.Module or a callable"),
    (dict(mixed_precision="fp8"), "mixed_precision", "one of 'no', 'fp16', 'bf16'"),
    (dict(threshold_average="weighted"), "threshold_average", "one of"),
    (dict(time_budget="soon"), "time_budget", "cannot read the duration"),
    (dict(epochz=3), "epochz", "unknown setting"),
])
def test_fit_refuses_bad_settings_naming_the_option(settings, named, says):
    with pytest.raises(ConfigError) as info:
        easycls.fit("digits", **settings)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{named}=") or f"'{named}'" in str(info.value)
    assert says in str(info.value)


def test_values_are_normalized_by_their_field():
    cfg = resolve_config("digits", lr=1, time_budget="2m")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.time_budget == 120.0


@pytest.mark.parametrize("settings, error", [
    (dict(arch="resnet_18"), ArchError),
    (dict(mixed_precision="fp16"), PrecisionError),  # needs CUDA; this suite runs on CPU
])
def test_bad_arch_and_precision_are_refused_before_any_data_is_read(tmp_path, settings, error):
    missing = tmp_path / "not-there"  # reading it would fail with a different error
    with pytest.raises(error):
        easycls.fit(str(missing), pretrained=False, **settings)


def test_cli_reports_config_errors_cleanly():
    result = runner.invoke(app, ["fit", "digits", "--epochs", "0"])
    assert result.exit_code == 2 and "epochs=0" in result.output and ">= 1" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["fit"])
    assert result.exit_code == 2 and "--resume DIR" in result.output


def _stored_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(source="digits", lr=0.01, bs=16, epochs=2, out=str(run))
    cfg.to_json(run / "config.json")
    return run


def test_resume_applies_the_settings_that_may_change(tmp_path):
    run = _stored_run(tmp_path)
    cfg = _resumed_config(run, None, dict(epochs=4, time_budget="1m", checkpoint_minutes=2.0,
                                          quiet=True, workers=0, lr=0.01, source=None))
    assert (cfg.epochs, cfg.time_budget, cfg.checkpoint_minutes) == (4, 60.0, 2.0)
    assert cfg.quiet is True and cfg.workers == 0 and cfg.lr == 0.01 and cfg.bs == 16


def test_resume_refuses_the_others_by_name(tmp_path):
    run = _stored_run(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot change on resume: lr .*bs ") as info:
        easycls.fit(resume=str(run), lr=0.02, bs=32, epochs=3)
    assert "epochs" in str(info.value).split("Settings that can:")[1]
    with pytest.raises(ConfigError, match="source"):
        easycls.fit("other-data", resume=str(run))


def test_size_is_bounded_like_a_bundle_input_size():
    # A run trained at a size its own bundle refuses to load would be lost work.
    from easycls.bundle_schema import MAX_SIZE, MIN_SIZE

    assert config.check("size", MAX_SIZE) == MAX_SIZE
    for bad in (MAX_SIZE + 1, MIN_SIZE - 1):
        with pytest.raises(ConfigError, match="size"):
            config.check("size", bad)
