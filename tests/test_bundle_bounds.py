"""Bounds before allocation: what a crafted `model.json` declares is checked against sane limits
and against the weight file's shapes before any model is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

from easycls.bundle import load, save_bundle
from easycls.bundle_schema import MAX_CLASSES, MAX_JSON_BYTES, BundleError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    return save_bundle(model, tmp_path_factory.mktemp("b") / "run", arch="test_resnet",
                       classes=["a", "b", "c"], size=32, mean=[0.5] * 3, std=[0.25] * 3)


def _crafted(bundle, to, text=None, **meta):
    shutil.copytree(bundle, to)
    doc = {**json.loads((to / "model.json").read_text()), **meta}
    (to / "model.json").write_text(text if text is not None else json.dumps(doc))
    return to


@pytest.mark.parametrize("text, meta, says", [
    ("[" * 100_000 + "]" * 100_000, {}, "nests 100000 levels deep, over the 32"),
    ('{"a": "' + "[" * 1000 + '"}', {}, "'arch' must be"),  # brackets in a string do not nest
    (" " * (MAX_JSON_BYTES + 1), {}, "over the 16 MB"),
    (None, dict(arch="resnet50", classes=[f"c{i}" for i in range(1_000_000)]),
     f"1 to {MAX_CLASSES:,}"),
    (None, dict(input_size=4096), "from 8 to 2048"),
])
def test_crafted_model_json_is_refused_naming_the_limit(bundle, tmp_path, text, meta, says):
    run = _crafted(bundle, tmp_path / "run", text, **meta)
    with pytest.raises(BundleError, match=says):
        load(run, device="cpu")


@pytest.mark.slow
def test_class_count_times_width_is_checked_before_the_model_is_built(bundle, tmp_path):
    """100,000 classes on resnet50 (a 0.8 GB head) against test_resnet's weights: refused from
    the shapes alone, in a process whose peak memory grows by far less than the head."""
    run = _crafted(bundle, tmp_path / "run", arch="resnet50",
                   classes=[f"c{i}" for i in range(MAX_CLASSES)])
    probe = textwrap.dedent(f"""
        import resource, sys
        from easycls.bundle import load, BundleError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load({str(run)!r}, device="cpu")
        except BundleError as e:
            print("refused:", e)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print("grown_mb", grown // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300)
    assert "refused:" in done.stdout and "resnet50 with 100000 classes" in done.stdout, (
        done.stdout + done.stderr)
    grown = int(done.stdout.split("grown_mb")[1])
    assert grown < 500  # the resnet50 head alone would be 819 MB


def test_nan_weights_are_refused(tmp_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    with torch.no_grad():
        model.get_classifier().weight[0, 0] = float("nan")
    run = save_bundle(model, tmp_path / "run", arch="test_resnet", classes=["a", "b"], size=32,
                      mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(BundleError, match="NaN or infinite.*train again"):
        load(run, device="cpu")
