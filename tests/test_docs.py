"""The docs site builds without a single warning, and the CLI page covers every command."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
needs_mkdocs = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings")),
    reason="docs dependencies not installed (pip install -e '.[docs]')")


def test_cli_reference_lists_every_command_and_option():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from gen_cli import cli_markdown
    finally:
        sys.path.pop(0)
    import typer.main

    from easycls.cli import app
    page = cli_markdown()
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        assert f"## `easycls {name}`" in page
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert p.opts[0] in page, (name, p.opts)


@needs_mkdocs
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()
    assert "easycls.evaluate.evaluate" in (tmp_path / "site" / "api" / "index.html").read_text()
