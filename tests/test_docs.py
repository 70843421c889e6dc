"""The docs site builds without a single warning, and the CLI page covers every command."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
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
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()
    assert "easycls.evaluate.evaluate" in (tmp_path / "site" / "api" / "index.html").read_text()


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_shell_commands_in_docs_use_real_commands_and_options(doc):
    """Every `easycls ...` line in a bash block names a real command and real options."""
    import typer.main

    from easycls.cli import app
    group = typer.main.get_command(app)
    for block in _code_blocks(doc.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(
                line.split(" #")[0].replace("<", "_").replace(">", "_"), comments=True
            )
            # `easycls ...`, or `python -m easycls ...` / `accelerate launch ... -m easycls ...`
            at = [
                i
                for i, w in enumerate(words)
                if w == "easycls" and (i == 0 or words[i - 1] == "-m")
            ]
            if not at or words[at[0] + 1:at[0] + 2] in ([], ["--version"], ["--help"]):
                continue
            words = words[at[0]:]
            assert words[1] in group.commands, f"{doc.name}: unknown command in {line!r}"
            cmd, rest = group.commands[words[1]], words[2:]
            if rest and rest[0] in getattr(cmd, "commands", {}):  # a group: `easycls cache list`
                cmd, rest = cmd.commands[rest[0]], rest[1:]
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            for w in rest:
                if w.startswith("-") and w != "-":
                    assert w.split("=")[0] in known, (
                        f"{doc.name}: {w} is not an option of `easycls {words[1]}`"
                    )


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_python_imports_in_docs_resolve(doc):
    for block in _code_blocks(doc.read_text(), "python"):
        for line in block.splitlines():
            if line.startswith(("from easycls", "import easycls")):
                exec(line, {})
