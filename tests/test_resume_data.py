"""`--resume` on changed data refuses in one line: the checkpoint records a fingerprint of the
training and validation files, and a new split would let trained-on images into validation."""

from __future__ import annotations

import pytest
from conftest import TINY, color_image, write_class_folders

import easycls
from easycls.checkpoint import CheckpointError, data_fingerprint, load_checkpoint

TINY_RUN = {**TINY, "arch": "test_resnet", "keep_checkpoint": True}


def test_fingerprint_sees_files_and_their_side_of_the_split():
    base = data_fingerprint(["a", "b", "c"], [False, False, True])
    assert base == data_fingerprint(["c", "a", "b"], [True, False, False])  # order-free
    assert base["train"] == 2 and base["valid"] == 1
    assert base != data_fingerprint(["a", "b", "d"], [False, False, True])  # another file
    assert base != data_fingerprint(["a", "b", "c"], [False, True, False])  # another split


def test_resume_on_changed_data_refuses_naming_the_counts(tmp_path):
    import numpy as np
    data = write_class_folders(tmp_path / "pets", per_class=6)
    run = tmp_path / "run"
    easycls.fit(str(data), out=str(run), **TINY_RUN)
    seen = load_checkpoint(run, arch="test_resnet", classes=["cat", "dog", "fox"])["data"]
    assert seen["train"] + seen["valid"] == 18
    (data / "cat" / "cat_0.png").unlink()                       # one removed ...
    color_image(0, 3, np.random.default_rng(9)).save(data / "cat" / "new.png")  # ... one added
    with pytest.raises(CheckpointError, match=r"the data changed since .*checkpoint.pth .*"
                                              r"(train|other files).*Put the data back"):
        easycls.fit(resume=str(run))
