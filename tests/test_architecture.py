"""The package's wiring: no import cycles, no private names imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import easycls

PACKAGE = Path(easycls.__file__).parent


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


def _graph() -> dict[str, set[str]]:
    """Package modules -> package modules they import at module level."""
    graph = {}
    for module, path in MODULES.items():
        body = ast.parse(path.read_text()).body
        graph[module] = {m for m, _ in _imports(module, body) if m in MODULES and m != module}
    return graph


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


def test_the_checker_sees_imports_and_cycles():
    graph = _graph()
    assert "easycls.data.prepare" in graph["easycls.train"]
    assert "easycls.config" in graph["easycls.data.prepare"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_package_modules():
    assert _cycle(_graph()) is None


def test_no_private_name_is_imported_from_another_module():
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            for target, name in _imports(module, [node]):
                private = name is not None and name.startswith("_") and name != "__version__"
                if private and target.startswith("easycls") and target != module:
                    found.append(f"{module} imports {target}.{name}")
    assert not found, found


def test_sources_does_not_know_recipes():
    assert "easycls.data.recipes" not in _graph()["easycls.data.sources"]
