"""The layers import in one direction only, and only the Serve layer imports Ray.

    core <- models <- routing <- execution <- tenancy <- deployments

A module that reached upwards (the policy importing the Serve layer, an engine importing
routing) would make the lower layer untestable alone; this keeps the README's
architecture true as the code grows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["core", "models", "routing", "execution", "tenancy", "deployments"]


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & above)
        for path in (ROOT / layer).rglob("*.py")
        if imported_packages(path) & above
    }
    assert offenders == {}


@pytest.mark.parametrize("layer", ["core", "models", "routing", "execution", "tenancy"])
def test_only_the_serve_layer_imports_ray(layer: str) -> None:
    assert [
        str(path.relative_to(ROOT))
        for path in (ROOT / layer).rglob("*.py")
        if "ray" in imported_packages(path)
    ] == []
