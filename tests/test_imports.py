"""The layers import each other in one direction only (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "napari_ldae"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, lazy imports inside functions included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
