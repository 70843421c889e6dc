"""Any timm backbone: one small epoch per model family, or an early error naming the sizes that
work."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import write_class_folders

import easycls
from easycls.export import export
from easycls.models import SizeError, check_size, default_size

pytestmark = pytest.mark.slow

# One model of each family, the smallest timm has; several are made for one input size
# (vit, deit, swin, levit, coatnet) and are built for the size asked for.
FAMILIES = ["resnet18", "efficientnet_b0", "mobilenetv3_small_050", "convnext_atto", "regnetx_002",
            "densenet121", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
            "swin_tiny_patch4_window7_224", "levit_128s", "coatnet_nano_rw_224", "mobilevit_xxs",
            "efficientvit_b0"]
TINY_RUN = dict(pretrained=False, epochs=1, size=32, bs=4, lr=1e-3, quiet=True, cache=False,
                augment=False)


class SmallNet(torch.nn.Module):
    """A custom architecture, importable (so `easycls.load` rebuilds it by name)."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, n_classes)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("fam") / "pets", per_class=4)


# These must go through the torch.export-based ONNX exporter, with no legacy warning.
DYNAMO_ONLY = {"resnet18", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224"}
LEGACY_WARNING = "legacy TorchScript-based ONNX export"


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_family_trains_one_epoch_reloads_and_exports(arch, tiny_folders, tmp_path):
    out = tmp_path / "run"
    easycls.fit(str(tiny_folders), arch=arch, out=str(out), **TINY_RUN)
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == arch and meta["input_size"] == 32
    # The bundle loads at the size it was trained at (img_size for fixed-size models).
    label, prob = easycls.load(out, device="cpu").predict(next((tiny_folders / "dog").iterdir()))
    assert label in ("cat", "dog", "fox") and 0 <= prob <= 1
    # ONNX through the supported exporter, or a one-line note naming the family and why not.
    pytest.importorskip("onnxscript")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = export(out, max_check=8)
    assert result.max_diff < 1e-4 and result.checked_on == "validation"
    if arch in DYNAMO_ONLY or result.exporter == "dynamo":
        assert result.exporter == "dynamo" and result.note is None
        assert not [w for w in seen if LEGACY_WARNING in str(w.message)]
    else:
        assert result.exporter == "legacy" and result.note.startswith(f"{arch}: ")
        assert "\n" not in result.note


def test_custom_module_trains_and_reloads_by_import_path(tiny_folders, tmp_path):
    out = tmp_path / "run"
    easycls.fit(str(tiny_folders), arch=SmallNet(3), out=str(out), **TINY_RUN)
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == f"custom:{__name__}:SmallNet"
    predictor = easycls.load(out, device="cpu")  # no model= needed: the class is importable
    assert isinstance(predictor.model, SmallNet)
    assert predictor.predict(next((tiny_folders / "cat").iterdir()))[0] in ("cat", "dog", "fox")


def test_a_size_the_model_cannot_take_fails_before_any_data_is_read(tmp_path):
    # The source does not exist: only an error raised before reading it can be a SizeError.
    with pytest.raises(SizeError, match=r"levit_128s cannot run at size 50; sizes that work: .*48"):
        easycls.fit(str(tmp_path / "no_such_folder"), arch="levit_128s", **{**TINY_RUN, "size": 50})


def test_sizes_from_timm():
    assert default_size("mobilevit_xxs") == 256 and default_size("resnet18") == 224
    check_size("vit_tiny_patch16_224", 32)  # built with img_size=32: no error
