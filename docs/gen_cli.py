"""The CLI reference page, generated from the Typer app itself, so it never goes stale.

Used two ways:

* as an mkdocs hook (`hooks:` in mkdocs.yml): adds `cli.md` to the site at build time;
* as a script: `python docs/gen_cli.py > cli.md` prints the same Markdown.
"""

from __future__ import annotations

import typer.main

from easycls.cli import app

INTRO = """# Command line

Every command and option of `easycls`, generated from the code (`docs/gen_cli.py`).
`easycls COMMAND --help` prints the same in a terminal; `python -m easycls` works too
(so does `accelerate launch -m easycls ...`).
"""


def _clean(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|").replace("<", "&lt;")


def _row(param, ctx) -> str:
    """One table row; options use click's own help record (names, ranges, defaults)."""
    if param.param_type_name == "argument":
        kind = "required" if param.required else "optional"
        return f"| `{param.name.upper()}` | {kind} argument | {_clean(param.help)} |"
    names, text = param.get_help_record(ctx)
    return f"| `{names}` | option | {_clean(text)} |"


def command_markdown(name: str, cmd) -> str:
    ctx = cmd.make_context(f"easycls {name}", [], resilient_parsing=True)
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines = [
        f"## `easycls {name}`",
        "",
        _clean(cmd.help),
        "",
        f"```\neasycls {name} {usage}\n```",
        "",
    ]
    params = [p for p in cmd.params if p.name != "help"]
    if params:
        lines += ["| argument / option | kind | meaning |", "|---|---|---|"]
        lines += [_row(p, ctx) for p in params]
    return "\n".join(lines) + "\n"


def cli_markdown() -> str:
    group = typer.main.get_command(app)
    pages = [INTRO] + [command_markdown(n, c) for n, c in group.commands.items()]
    return "\n".join(pages)


def on_files(files, config):
    """mkdocs hook: add the generated page as `cli.md`."""
    from mkdocs.structure.files import File
    files.append(File.generated(config, "cli.md", content=cli_markdown()))
    return files


if __name__ == "__main__":
    print(cli_markdown())
