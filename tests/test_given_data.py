"""fit(dls) with the user's fastai DataLoaders and fit(block, source) with a DataBlock: a
complete run directory whose safe bundle predicts as the returned Learner does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_class_folders
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import RandomSplitter, get_image_files, parent_label
from fastai.vision.augment import RandTransform, Resize
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock, ImageDataLoaders

import easycls
from easycls.config import ConfigError
from easycls.data.given import GivenData

TINY = dict(arch="test_resnet", pretrained=False, epochs=2, lr=1e-2, quiet=True)
FILES = ("model.safetensors", "model.json", "metrics.json", "config.json", "history.csv")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("data") / "pets", per_class=17)


@pytest.fixture(scope="module")
def dls_run(folders, tmp_path_factory):
    dls = ImageDataLoaders.from_folder(folders, valid_pct=0.25, seed=0, item_tfms=Resize(16),
                                       bs=8)
    out = tmp_path_factory.mktemp("runs") / "dls"
    return easycls.fit(dls, out=str(out), **TINY), out


def _same_labels(learn, run_dir, files):
    saved = easycls.load(run_dir, device="cpu")
    bundle = [label for label, _ in saved.predict_many([str(f) for f in files])]
    fastai = [str(learn.predict(f)[0]) for f in files]
    assert bundle == fastai
    probs, _ = learn.get_preds(dl=learn.dls.test_dl(files))
    assert np.allclose(saved.probabilities([str(f) for f in files]), probs.numpy(), atol=1e-3)


@pytest.mark.slow
def test_fit_from_the_users_dataloaders(dls_run, folders):
    learn, out = dls_run
    assert all((out / f).is_file() for f in FILES)
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == list(learn.dls.vocab) and meta["input_size"] in (16, [3, 16, 16])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"] == "<DataLoaders>" and cfg["size"] == 16 and cfg["bs"] == 8
    assert cfg["fastai"]["data"] == {"import": "fastai.data.core:DataLoaders"}
    assert set(json.loads((out / "metrics.json").read_text())) >= {"accuracy", "valid_loss"}
    _same_labels(learn, out, sorted(folders.glob("*/*.png"))[:50])


def test_resume_without_the_dataloaders_is_refused(dls_run):
    with pytest.raises(ConfigError, match="data=fastai.data.core:DataLoaders"):
        easycls.fit(resume=str(dls_run[1]))


@pytest.mark.slow
def test_fit_from_a_datablock(folders, tmp_path):
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files,
                      get_y=parent_label, splitter=RandomSplitter(0.25, seed=0),
                      item_tfms=Resize(16))
    learn = easycls.fit(block, folders, out=str(tmp_path / "run"), bs=8, **TINY)
    assert all((tmp_path / "run" / f).is_file() for f in FILES)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["fastai"]["data"] == {"import": "fastai.data.block:DataBlock",
                                     "items": str(folders)}
    _same_labels(learn, tmp_path / "run", sorted(folders.glob("*/*.png"))[:50])


def test_validation_transforms_the_bundle_cannot_carry_are_named(folders):
    squish = ImageDataLoaders.from_folder(folders, valid_pct=0.25, seed=0, bs=8,
                                          item_tfms=Resize(16, method="squish"))
    (note,) = GivenData(squish).bundle_notes()
    assert "your validation transform Resize does something else" in note
    crop = ImageDataLoaders.from_folder(folders, valid_pct=0.25, seed=0, bs=8,
                                        item_tfms=Resize(16))
    given = GivenData(crop)
    assert given.bundle_notes() == [] and given.size == 16 and not given.multi_label


class SeenItems(RandTransform):
    """A training-only item transform of the user's: records each image it is given."""

    split_idx, order = 0, 0  # training items only, before any resize

    def __init__(self):
        super().__init__(p=1.0)
        self.sizes = []

    def encodes(self, img: PILImage):
        self.sizes.append(img.size)
        return img.flip_lr()


def test_item_tfms_run_on_each_item_and_the_bundle_predicts_as_learn(folders, tmp_path):
    seen = SeenItems()
    learn = easycls.fit(str(folders), out=str(tmp_path / "run"), size=16, bs=8, workers=0,
                        item_tfms=[seen], **TINY)
    # Every training item of every epoch, as opened (24 px), before easycls's Resize(16).
    per_epoch = len(learn.dls.train_ds) // 8 * 8
    assert len(seen.sizes) >= TINY["epochs"] * per_epoch and set(seen.sizes) == {(24, 24)}
    assert learn.dls.one_batch()[0].shape[-2:] == (16, 16)
    assert all((tmp_path / "run" / f).is_file() for f in FILES)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["source"] == str(folders) and cfg["size"] == 16
    assert [t["import"] for t in cfg["fastai"]["item_tfms"]] == [f"{__name__}:SeenItems"]
    _same_labels(learn, tmp_path / "run", sorted(folders.glob("*/*.png"))[:50])


def test_transforms_beside_the_users_own_dataloaders_are_refused(folders):
    dls = ImageDataLoaders.from_folder(folders, valid_pct=0.25, seed=0, bs=8,
                                       item_tfms=Resize(16))
    with pytest.raises(ConfigError, match="give them to the DataBlock"):
        easycls.fit(dls, batch_tfms=[Resize(8)], **TINY)
