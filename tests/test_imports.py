"""The layers import each other in one direction only (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "napari_ldae"


def _imports(path: Path, typing: bool = True) -> set[str]:
    """Every module a file imports, lazy imports inside functions included (and those under
    ``if TYPE_CHECKING:`` unless ``typing`` is false)."""
    tree = ast.parse(path.read_text())
    if not typing:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("core", ("napari_ldae.data", "napari_ldae.train", "napari_ldae.evaluate",
              "napari_ldae.gui", "napari_ldae.session", "napari_ldae.cli", "lightning")),
    ("evaluate", ("napari_ldae.train", "napari_ldae.gui", "lightning")),
])
def test_layer_does_not_import(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = {f"{path.relative_to(PACKAGE)}: {name}"
           for path in (PACKAGE / layer).rglob("*.py") for name in _imports(path)
           if any(name == f or name.startswith(f + ".") for f in forbidden)}
    assert not bad, sorted(bad)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycles() -> None:
    """No module imports, however lazily, one that imports it back (core/bundle.py and
    core/presets.py, session and operations, train and evaluate once did)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: sorted(n for n in _imports(p, typing=False) if n in modules and n != m)
             for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in graph[module]:
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)
