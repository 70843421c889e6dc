"""`weights=`: a run directory, a bundle, a .safetensors or .pth file; strict except the head."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import easycls
from easycls.cli import app
from easycls.weights import WeightsError, check_fits, load_start, start_weights

SMALL = {**TINY, "arch": "test_resnet"}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A 3-class test_resnet run on colour-coded images (normalized from its own pixels)."""
    from conftest import write_class_folders
    root = write_class_folders(tmp_path_factory.mktemp("src") / "pets", per_class=8)
    out = tmp_path_factory.mktemp("runs") / "src"
    easycls.fit(str(root), out=str(out), **SMALL)
    return out


def test_fit_from_a_run_directory_takes_its_arch_size_and_normalization(
        source_run, tmp_path, capsys):
    from conftest import write_class_folders
    target = write_class_folders(tmp_path / "new", classes=("a", "b"), per_class=8, seed=5)
    kw = {k: v for k, v in SMALL.items() if k not in ("arch", "size", "quiet")}
    learn = easycls.fit(str(target), weights=str(source_run), out=str(tmp_path / "r"), **kw)
    src = json.loads((source_run / "model.json").read_text())
    new = json.loads((tmp_path / "r" / "model.json").read_text())
    assert (new["arch"], new["input_size"]) == ("test_resnet", 32)  # from the source run
    assert (new["mean"], new["std"]) == (src["mean"], src["std"])
    assert new["classes"] == ["a", "b"] and learn.easycls.metrics["accuracy"] >= 0.0
    summary = capsys.readouterr().out
    assert f"weights from the run {source_run}" in summary and "normalized as that run" in summary
    # A run's schedule: no frozen epoch, so the history holds the one epoch asked for.
    assert "fine-tuning: 0 frozen epoch(s)" in summary
    assert (tmp_path / "r" / "history.csv").read_text().count("\n") == 2


def test_the_schedule_follows_the_weights_source_and_settings_win(source_run, tmp_path):
    from easycls.checkpoint import plan_phases
    from easycls.train import resolve_config
    from easycls.weights import IMAGENET_SCHEDULE, RUN_SCHEDULE
    save_file(timm.create_model("test_resnet").state_dict(), str(tmp_path / "w.safetensors"))
    of = lambda **kw: resolve_config("x", **kw)  # noqa: E731
    assert (of(weights=str(source_run)).freeze_epochs, of(weights=str(source_run)).body_lr_ratio
            ) == RUN_SCHEDULE
    plain = of(weights=str(tmp_path / "w.safetensors"), arch="test_resnet")
    assert (plain.freeze_epochs, plain.body_lr_ratio) == IMAGENET_SCHEDULE == (1, 0.01)
    mine = of(weights=str(source_run), freeze_epochs=2, body_lr_ratio=0.5)
    assert (mine.freeze_epochs, mine.body_lr_ratio) == (2, 0.5)
    [one] = plan_phases(True, 5, 1e-3, freeze_epochs=0, body_lr_ratio=0.5)
    assert (one.name, one.epochs, one.lr) == ("unfrozen", 5, slice(2.5e-4, 5e-4))


def test_body_of_the_source_run_is_loaded_and_a_new_head_is_fresh(source_run):
    src = start_weights(source_run)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    fresh_head = model.get_classifier().weight.clone()
    assert load_start(model, src, "test_resnet", classes=list("abcde")) is False
    state = load_file(str(source_run / "model.safetensors"))
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if not k.startswith("fc."))
    assert torch.equal(model.get_classifier().weight, fresh_head)


def test_same_classes_load_the_head_too(source_run):
    src = start_weights(source_run / "model.safetensors")  # the bundle's own file
    assert src.kind == "bundle" and src.normalization is not None
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    assert load_start(model, src, "test_resnet", classes=src.meta["classes"]) is True
    other = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    assert load_start(other, src, "test_resnet", classes=["x", "y", "z"]) is False


def test_another_arch_stops_in_one_line_before_any_data_is_read(source_run, tmp_path):
    # The source does not exist: reading data first would raise DataError instead.
    with pytest.raises(WeightsError) as err:
        easycls.fit(str(tmp_path / "no-such-data"), weights=str(source_run),
                    **{**SMALL, "arch": "resnet18"})
    msg = str(err.value)
    assert "\n" not in msg and "body tensors fit resnet18" in msg
    assert "arch='test_resnet'" in msg and "not in the file" in msg or "file [" in msg


def test_a_file_with_extra_body_tensors_is_refused(tmp_path):
    # resnet34 holds every tensor of resnet18 with the same shape, and more blocks: a
    # partial load would pass a shape check of the model's own tensors alone.
    path = tmp_path / "r34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    with pytest.raises(WeightsError, match=r"(?s)fit resnet18; not: layer1\.2.*not in the model"):
        check_fits("resnet18", start_weights(path), 32)


def test_plain_state_dict_files_load(tmp_path):
    state = timm.create_model("test_resnet", pretrained=False, num_classes=7).state_dict()
    torch.save({"state_dict": state}, tmp_path / "w.pth")  # a training checkpoint's layout
    save_file(state, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
        src = start_weights(tmp_path / name)
        assert src.kind == "file" and src.normalization is None
        assert load_start(model, src, "test_resnet") is False
        own = model.state_dict()
        assert all(torch.equal(own[k], state[k]) for k in own if not k.startswith("fc."))


class _Anything:
    pass


def test_a_pickle_of_objects_is_refused_with_how_to_convert_it(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"model": timm.create_model("test_resnet", pretrained=False), "x": _Anything()},
               path)
    with pytest.raises(WeightsError) as err:
        check_fits("test_resnet", start_weights(path), 32)
    msg = str(err.value)
    assert "\n" not in msg and "loads only safetensors files and plain state dicts" in msg
    assert "If you trust the file, convert it once" in msg and f"{path}.safetensors" in msg
    assert "Re-running `torch.load`" not in msg  # torch's own advice is not passed on


@pytest.mark.parametrize("given, says", [("nowhere", "no such file or folder"),
                                         ("empty", "holds no model.safetensors")])
def test_missing_weights_say_what_to_give(tmp_path, given, says):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=says):
        start_weights(tmp_path / given)


def test_cli_takes_a_run_directory_and_refuses_another_arch(source_run, tmp_path):
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "no-data"), "--weights",
                                      str(source_run), "--arch", "resnet18", "--quiet"])
    assert result.exit_code == 2
    assert "body tensors fit resnet18" in result.output and "Traceback" not in result.output
