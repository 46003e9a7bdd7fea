"""The Flower roles are one installed name: ``fedmodel.server`` etc., read from the checkout's top-level folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fedmodel.clients
import fedmodel.server
import fedmodel.simulations
from fedmodel.roles import role_path

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("server", "clients", "simulations")


def test_in_a_checkout_each_role_reads_its_top_level_folder() -> None:
    for package, role in ((fedmodel.server, "server"), (fedmodel.clients, "clients"),
                          (fedmodel.simulations, "simulations")):
        assert [Path(p) for p in package.__path__] == [ROOT / role]


def test_installed_modules_beside_the_package_are_used(tmp_path: Path) -> None:
    package = tmp_path / "fedmodel" / "server"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text("")
    assert role_path([str(package)], "server") == [str(package)]


def test_a_role_with_no_modules_anywhere_is_an_import_error(tmp_path: Path) -> None:
    package = tmp_path / "fedmodel" / "server"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / "server").mkdir()  # a folder called server, but not in a checkout (no pyproject.toml)
    with pytest.raises(ImportError, match="fedmodel.server"):
        role_path([str(package)], "server")


@pytest.mark.parametrize("folder", ["fedmodel", *ROLES, "tests", "benchmarks"])
def test_nothing_imports_a_top_level_role_module(folder: str) -> None:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                      if name.split(".")[0] in ROLES]
    assert not found, "import fedmodel.<role> instead: " + ", ".join(found)
