"""docs/fastai.md's "Bring your own pieces": every snippet runs, in order, as written."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOC = Path(__file__).resolve().parents[1] / "docs" / "fastai.md"


def _section_snippets() -> list[str]:
    text = DOC.read_text()
    start = text.index("## Bring your own pieces")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_section_has_a_snippet_per_piece():
    joined = "\n".join(_section_snippets())
    for piece in ("cbs=", "loss_func=", "metrics=", "opt_func=", "moms=", "splitter",
                  "slice(1e-5, 1e-3)", "batch_tfms=", "item_tfms=", "fit(dls", "fit(block, path",
                  "with_labels=True", "plot_loss()", "/ 255.0"):
        assert piece in joined, piece


@pytest.mark.slow
def test_bring_your_own_pieces_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the runs' default directories land here
    namespace: dict = {}
    for i, snippet in enumerate(_section_snippets()):
        exec(compile(snippet, f"{DOC.name} snippet {i + 1}", "exec"), namespace)
    learn = namespace["learn"]
    assert len(learn.dls.vocab) == 10
    out = capsys.readouterr().out
    assert "LabelSmoothingCrossEntropy" in out and "epoch 1/1" in out
    assert len(list((tmp_path / "runs").iterdir())) == 5  # one run directory per fit
