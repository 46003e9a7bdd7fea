"""Ruff and mypy over the repository, as CI runs them (configured in pyproject.toml).

Both run as subprocesses of this interpreter, so CI needs only the README's test command
(``pip install -e ".[dev]"`` brings them). A finding fails the test with the tool's own output.
mypy runs cold (its cache in the test's tmp dir): a clean clone pays that, 60-130 s on 2 cores.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedmodel", "server", "clients", "simulations")
ROLES = ("server", "clients", "simulations")
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^]]*\])?(?P<rest>.*)$")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    run = _run("ruff", "check", "--no-cache", ".")
    assert run.returncode == 0, run.stdout + run.stderr


def installed_layout(into: Path) -> Path:
    """The ``fedmodel`` package as a wheel lays it out, made of links into the checkout.

    In the checkout ``fedmodel.server`` (``clients``, ``simulations``) finds its modules in the top-level
    folder at run time (:mod:`fedmodel.roles`), which mypy cannot follow; here they sit inside
    ``fedmodel/<role>/`` beside the package's own ``__init__.py``, as in an installed wheel.
    """
    package = into / "fedmodel"
    package.mkdir(parents=True)
    for entry in (ROOT / "fedmodel").iterdir():
        if entry.name in ROLES:
            role = package / entry.name
            role.mkdir()
            (role / "__init__.py").symlink_to(entry / "__init__.py")
            for module in (ROOT / entry.name).iterdir():
                if module.name != "__pycache__":
                    (role / module.name).symlink_to(module)
        elif entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    return into


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    source = installed_layout(tmp_path / "src")
    run = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
                          str(tmp_path / "mypy-cache"), "-p", "fedmodel"], cwd=source, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_type_ignore_names_its_code_and_a_reason() -> None:
    bare = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if (m := IGNORE.search(line)) and not (m["codes"] and re.match(r"\s*#\s*\S", m["rest"]))]
    assert not bare, "a type: ignore needs [code] and a reason comment after it:\n" + "\n".join(bare)
