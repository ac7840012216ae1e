"""DESIGN.md's layers: nothing in ``civic.deploy`` (nor the docker SDK) is imported by the server
or the citizen, so neither needs Docker to run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import civic

PACKAGE = Path(civic.__file__).resolve().parent


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", ["server", "citizen"])
def test_deploy_is_not_imported_below_it(layer: str) -> None:
    offenders = {f"{path.relative_to(PACKAGE)}: {name}"
                 for path in sorted((PACKAGE / layer).rglob("*.py"))
                 for name in imported(path)
                 if name.startswith(("civic.deploy", "docker"))}
    assert not offenders, sorted(offenders)
