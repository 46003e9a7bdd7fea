"""The node's guard around flwr-clientapp: FABs with code of their own are refused, the installed ClientApp runs."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from fedmodel.config import RunConfig
from fedmodel.deployment.guard import COMPONENTS, check_fab, guarded_env, installed_client_app
from fedmodel.errors import PolicyViolation
from fedmodel.runs import write_app


def fedmodel_fab(folder: Path) -> bytes:
    return build_fab_from_disk(write_app(folder / "app", RunConfig()))


def hostile_fab(folder: Path, *, clientapp: str, files: dict[str, str]) -> bytes:
    """A FAB built by Flower from fedmodel's pyproject with the component and extra files a hostile coordinator picks."""
    app = write_app(folder / "hostile", RunConfig())
    pyproject = app / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'clientapp = "{COMPONENTS["clientapp"]}"',
                                                       f'clientapp = "{clientapp}"'))
    for name, text in files.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    return build_fab_from_disk(app)


READER = 'from flwr.clientapp import ClientApp\napp = ClientApp()\nDATA = open("/etc/hostname").read()\n'


def test_fedmodels_own_fab_passes(tmp_path: Path) -> None:
    content = fedmodel_fab(tmp_path)
    assert sorted(zipfile.ZipFile(io.BytesIO(content)).namelist()) == [".info/CONTENT", "pyproject.toml"]
    check_fab(content, "site-a")


def test_a_fab_naming_its_own_clientapp_is_refused(tmp_path: Path) -> None:
    content = hostile_fab(tmp_path, clientapp="hostile_client:app", files={"hostile_client.py": READER})
    with pytest.raises(PolicyViolation, match=r"site-a: refused .*\(installed-code\).*hostile_client\.py") as info:
        check_fab(content, "site-a")
    assert info.value.rule == "installed-code"


def test_a_fab_shadowing_fedmodels_clientapp_is_refused(tmp_path: Path) -> None:
    content = hostile_fab(tmp_path, clientapp=COMPONENTS["clientapp"],
                          files={"clients/__init__.py": "", "clients/app.py": READER})
    with pytest.raises(PolicyViolation, match=r"clients/app\.py"):
        check_fab(content, "site-a")


def test_a_pyproject_only_fab_naming_another_component_is_refused(tmp_path: Path) -> None:
    content = hostile_fab(tmp_path, clientapp="os:system", files={})
    with pytest.raises(PolicyViolation, match=r"names clientapp 'os:system', not fedmodel's 'fedmodel.clients.app:app'"):
        check_fab(content, "site-a")


def test_a_fab_that_is_no_archive_is_refused() -> None:
    with pytest.raises(PolicyViolation, match=r"cannot be read \(BadZipFile\)"):
        check_fab(b"not a zip", "site-a")


def test_the_installed_clientapp_is_fedmodels() -> None:
    import fedmodel.clients.app

    assert installed_client_app() is fedmodel.clients.app.app


def test_the_guard_replaces_the_steps_flwr_clientapp_really_calls() -> None:
    """If Flower renamed these, the guard would silently patch nothing: fail here instead."""
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")
    names = set(runtime.run_clientapp.__code__.co_names)
    assert {"pull_task_input", "install_from_fab", "get_load_client_app_fn", "install_app_dependencies"} <= names


def test_the_supernodes_path_finds_the_guard_first(tmp_path: Path) -> None:
    env = guarded_env({"PATH": os.environ.get("PATH", "")}, tmp_path)
    found = shutil.which("flwr-clientapp", path=env["PATH"])
    assert found == str(tmp_path / "bin" / "flwr-clientapp")
    assert os.stat(found).st_mode & 0o777 == 0o700
    run = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: flwr-clientapp") and "--runtime-api-address" in run.stdout
