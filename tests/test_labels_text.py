"""Labels and names are text: any Unicode name sorts, undecodable names train, evaluate and plot
(stored losslessly, shown escaped), tabs and line breaks never split a text output's lines,
spaces that split labels are announced, and a time budget that cannot be met says so (zip
members outside the archive: test_adversarial.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import TINY, color_image, write_class_folders

import easycls
from easycls.data.items import _natural_key
from easycls.data.tables import read_label_csv
from easycls.rundir import write_skipped
from easycls.safeio import one_field

TINY_RUN = {**TINY, "arch": "test_resnet"}


def test_natural_sort_takes_any_unicode_name():
    names = ["10", "2", "²", "b", "٣", "a"]  # "²" is a digit int() refuses; "٣" is decimal
    assert sorted(names, key=_natural_key) == ["2", "٣", "10", "a", "b", "²"]


def test_a_class_folder_name_that_is_not_utf8_trains_evaluates_and_plots(tmp_path):
    root = tmp_path / "pets"
    write_class_folders(root, classes=("dog", "fox"), per_class=4)
    bad = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(bad)
    rng = np.random.default_rng(0)
    for i in range(4):
        color_image(0, 3, rng).save(os.fsdecode(bad + f"/{i}.png".encode()))
    run = tmp_path / "run"
    easycls.fit(str(root), out=str(run), **TINY_RUN)
    assert (run / "confusion_matrix.png").stat().st_size > 0
    assert "caf\udce9" in easycls.load(run, device="cpu").classes  # stored losslessly
    from easycls.evaluate import evaluate
    ev = evaluate(run, str(root), split="all", quiet=True)
    assert (ev.out_dir / "confusion_matrix.png").is_file()


def test_tabs_and_line_breaks_in_names_are_quoted(tmp_path):
    assert one_field("plain name.png") == "plain name.png"
    assert one_field("a\tb.png") == '"a\\tb.png"' and one_field("a\nb") == '"a\\nb"'
    write_skipped(tmp_path / "skipped.txt", [("x/a\tb.png", "truncated"),
                                             ("x/c\nd.png", "not an image")])
    lines = (tmp_path / "skipped.txt").read_text().splitlines()
    assert lines == ['"x/a\\tb.png"\ttruncated', '"x/c\\nd.png"\tnot an image']


def test_labels_split_on_spaces_are_announced(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\na.png,golden retriever\nb.png,pug\n")
    with pytest.warns(UserWarning, match=r"1 label cell\(s\) hold spaces.*'golden retriever' -> "
                                         r"\['golden', 'retriever'\].*--label-delimiter '\|'"):
        read_label_csv(csv)
    assert read_label_csv(csv, label_delimiter="|").labels[0] == ["golden retriever"]


def test_lists_of_label_codes_are_not_announced(tmp_path, recwarn):
    csv = tmp_path / "codes.csv"
    csv.write_text("image,label\na.png,0 2 5 8\nb.png,1\n")
    assert read_label_csv(csv).labels[0] == ["0", "2", "5", "8"]
    assert not [w for w in recwarn if "hold spaces" in str(w.message)]


def test_a_budget_that_cannot_be_met_says_so(class_folders, tmp_path, capsys):
    run = tmp_path / "run"
    easycls.fit(str(class_folders), out=str(run), time_budget=0.001, **TINY_RUN)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["budget_exceeded_seconds"] > 0
    assert "over the 0.001 s time budget by" in capsys.readouterr().out
