"""The package's wiring, as docs/architecture.md states it: every module in one layer of its
table, imports only down the table (or within a layer), no import cycle, no private name
imported across modules. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import easycls

PACKAGE = Path(easycls.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"
# The package's version string is data, not code: any module may read it.
VERSION = ("easycls", "__version__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an `ImportFrom` names, from inside `module`."""
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, nodes) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for import statements among `nodes`."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None) if sub in MODULES else (target, a.name))
    return out


def _all_imports(module: str) -> list[tuple[str, str | None]]:
    """Every import of `module`: at module level, in functions, in branches."""
    return _imports(module, ast.walk(ast.parse(MODULES[module].read_text())))


def _graph() -> dict[str, set[str]]:
    """Package modules -> the package modules they import, anywhere in their code."""
    return {m: {t for t, name in _all_imports(m)
                if t in MODULES and t != m and (t, name) != VERSION}
            for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (found := visit(nxt, stack + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def _layers() -> list[tuple[str, list[str]]]:
    """(layer, module paths) of the table under "## Layers", top layer first."""
    section = DOC.read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
    return [(cells[1].strip(), re.findall(r"`([\w/]+(?:\.py|/))`", cells[2]))
            for cells in rows[1:] if len(cells) > 3]


def _layer_of() -> dict[str, int]:
    """Module -> index of its layer (0 = top); a folder entry covers the package under it."""
    found = {}
    for i, (_, paths) in enumerate(_layers()):
        for path in paths:
            prefix = "easycls." + path.rstrip("/").removesuffix(".py").replace("/", ".")
            prefix = prefix.removesuffix(".__init__")
            for m in MODULES:
                if m == prefix or (path.endswith("/") and m.startswith(prefix + ".")):
                    found.setdefault(m, i)
    return found


def test_the_checker_sees_every_import_and_cycle():
    graph = _graph()
    assert "easycls.data.prepare" in graph["easycls.train"]
    assert "easycls.config" in graph["easycls.data.prepare"]
    assert "easycls.train" in graph["easycls.cli"]  # imported inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set()}) is None
    names = [name for name, _ in _layers()]
    assert names[0] == "surface" and names[-1] == "foundations", names


def test_no_import_cycle_counting_imports_inside_functions():
    assert _cycle(_graph()) is None


def test_every_module_is_in_the_layer_table():
    missing = sorted(set(MODULES) - set(_layer_of()))
    assert not missing, f"add {missing} to the layer table of docs/architecture.md"


def test_imports_go_down_the_layer_table():
    layer, names = _layer_of(), [name for name, _ in _layers()]
    upward = [f"{m} ({names[layer[m]]}) imports {t} ({names[layer[t]]})"
              for m, targets in _graph().items() for t in sorted(targets)
              if m in layer and t in layer and layer[t] < layer[m]]
    assert not upward, upward


def test_the_data_layer_knows_nothing_of_processes_or_training():
    banned = {"easycls.distributed", "easycls.callbacks", "easycls.train", "easycls.cli"}
    found = [f"{m} imports {t}" for m in MODULES if m.startswith("easycls.data.")
             for t, _ in _all_imports(m) if t in banned]
    assert not found, found


def test_no_private_name_is_imported_from_another_module():
    found = []
    for module in MODULES:
        for target, name in _all_imports(module):
            private = name is not None and name.startswith("_") and name != "__version__"
            if private and target.startswith("easycls") and target != module:
                found.append(f"{module} imports {target}.{name}")
    assert not found, found


def test_sources_does_not_know_recipes():
    assert "easycls.data.recipes" not in _graph()["easycls.data.sources"]


def test_environ_set_restores_only_the_names_it_set(monkeypatch):
    import os

    from easycls.job import environ_set
    monkeypatch.setenv("EASYCLS_T_KEPT", "a")
    monkeypatch.delenv("EASYCLS_T_NEW", raising=False)
    with environ_set(EASYCLS_T_KEPT="b", EASYCLS_T_NEW="c"):
        assert os.environ["EASYCLS_T_KEPT"] == "b" and os.environ["EASYCLS_T_NEW"] == "c"
        os.environ["EASYCLS_T_OTHER"] = "d"  # set inside by someone else: stays
    assert os.environ["EASYCLS_T_KEPT"] == "a" and "EASYCLS_T_NEW" not in os.environ
    assert os.environ.pop("EASYCLS_T_OTHER") == "d"
