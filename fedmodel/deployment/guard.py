"""The node runs only code its owner installed: a guard around Flower's ``flwr-clientapp``.

A deployed SuperNode starts one ``flwr-clientapp`` process per message, which installs the FAB the
coordinator submitted and imports the ClientApp the FAB names, with the FAB's own folder first on
``sys.path``. A hostile coordinator could therefore run its own code at the node (a FAB naming another
``clientapp``, or shipping its own ``clients/app.py``) and read the owner's data file. Flower 1.41's
own FAB verification (``flower-supernode --trusted-entities``) needs a SuperLink that vouches for the
FAB's signature (``valid_license``), which the open-source SuperLink does not.

So ``fedmodel node start`` puts a ``flwr-clientapp`` of its own first on the SuperNode's ``PATH``
(:func:`guarded_env`): Flower's SuperExec launches it by that name for every message. It runs
Flower's ``flwr-clientapp`` (:func:`main`) with two steps replaced:

* installing the FAB: instead, :func:`check_fab` refuses any FAB that carries anything but its
  ``pyproject.toml`` (fedmodel's own runs submit a pyproject only, :func:`fedmodel.runs.write_app`)
  or that names components other than fedmodel's (:data:`COMPONENTS`). Nothing of the FAB is written
  to disk or imported;
* loading the ClientApp: the ClientApp object of the installed fedmodel package, imported by module
  name; the FAB's folder is never on ``sys.path``.

A refused FAB gets an error reply (``PolicyViolation``, rule ``installed-code``) before the ClientApp
is imported or any data is read, and the refusal is written to the node's audit log. Runtime
dependency installation is off whatever the run asks (it would install packages the coordinator names).
The run config inside the FAB is not code: the ClientApp checks it against its allow-list.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
import tomllib
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedmodel.errors import PolicyViolation

RULE_INSTALLED_CODE = "installed-code"
COMPONENTS: Mapping[str, str] = {"serverapp": "fedmodel.server.app:app", "clientapp": "fedmodel.clients.app:app"}
"""fedmodel's Flower components, as its runs' ``pyproject.toml`` names them."""
FAB_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
"""What a FAB of fedmodel's holds: its pyproject and Flower's manifest of it."""
SHIM_NAME = "flwr-clientapp"


def check_fab(content: bytes, owner: str) -> None:
    """Refuse a FAB that carries code or names components other than fedmodel's.

    Parameters
    ----------
    content : bytes
        The FAB as Flower hands it over (a zip archive).
    owner : str
        The owner's name, for the refusal.

    Raises
    ------
    PolicyViolation
        Rule ``installed-code``, naming the extra files or the foreign component.
    """
    def refuse(detail: str) -> PolicyViolation:
        return PolicyViolation(owner, RULE_INSTALLED_CODE, detail + "; this node runs only the fedmodel ClientApp "
                               "its owner installed")

    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            names = fab.namelist()
            extra = sorted(set(names) - FAB_FILES)
            if extra:
                shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
                raise refuse(f"the run's app carries files of its own ({shown})")
            if "pyproject.toml" not in names:
                raise refuse("the run's app has no pyproject.toml")
            project = tomllib.loads(fab.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise refuse(f"the run's app cannot be read ({type(exc).__name__})") from None
    components = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    if not isinstance(components, dict):
        raise refuse("the run's app declares no components")
    for role, expected in COMPONENTS.items():
        named = components.get(role)
        if named != expected:
            raise refuse(f"the run's app names {role} {str(named)[:80]!r}, not fedmodel's {expected!r}")


def installed_client_app() -> Any:
    """fedmodel's ClientApp from the installed package (never from a FAB's folder)."""
    import importlib

    module_name, _, attribute = COMPONENTS["clientapp"].partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def guarded_env(env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """``env`` with this node's guarded ``flwr-clientapp`` first on ``PATH`` (written into ``state_dir/bin``).

    The shim runs this interpreter with ``-P`` (no working folder on ``sys.path``) on :func:`main`.
    """
    folder = state_dir / "bin"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    shim = folder / SHIM_NAME
    text = f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -P -m fedmodel.deployment.guard \"$@\"\n"
    tmp = shim.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o700)
    os.replace(tmp, shim)
    out = dict(env)
    out["PATH"] = str(folder) + os.pathsep + out.get("PATH", "")
    return out


def _owner_of(context: Any) -> str:
    node = getattr(context, "node_config", {}) or {}
    return str(node.get("owner-name", f"node {getattr(context, 'node_id', '?')}"))


def _record(owner: str, context: Any, exc: PolicyViolation) -> None:
    from fedmodel.clients.privacy_account import record_refusal  # the node's audit log, as every refusal

    record_refusal(owner, context, exc)


def main(argv: list[str] | None = None) -> None:
    """Flower's ``flwr-clientapp``, with the FAB checked instead of installed and fedmodel's ClientApp loaded."""
    import importlib

    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    # the module by name: ``import a.b.c as x`` would give a function where a package re-exports one under c's name
    runtime = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    pulled: dict[str, Any] = {}
    pull = runtime.pull_task_input

    def pull_and_keep(client: Any) -> Any:
        message, context, run, fab = pull(client)
        pulled["context"] = context
        return message, context, run, fab

    def check_instead_of_install(content: bytes, *_: Any, **__: Any) -> None:
        context = pulled.get("context")
        owner = _owner_of(context)
        try:
            check_fab(content, owner)
        except PolicyViolation as exc:
            if context is not None:
                _record(owner, context, exc)
            raise

    def load_installed(*_: Any, **__: Any) -> Callable[..., Any]:
        return lambda *_a, **_k: installed_client_app()

    runtime.pull_task_input = pull_and_keep  # type: ignore[attr-defined]  # patching Flower's SuperNode runtime module
    runtime.install_from_fab = check_instead_of_install  # type: ignore[attr-defined]  # patching Flower's SuperNode runtime module
    runtime.get_load_client_app_fn = load_installed  # type: ignore[attr-defined]  # patching Flower's SuperNode runtime module
    runtime.install_app_dependencies = _no_dependency_installation  # type: ignore[attr-defined]  # patching Flower's SuperNode runtime module
    if argv is not None:
        sys.argv = [SHIM_NAME, *argv]
    else:
        sys.argv[0] = SHIM_NAME
    sys.argv = [a for a in sys.argv if a != "--allow-runtime-dependency-installation"]
    flwr_clientapp()


def _no_dependency_installation(*_: Any, **__: Any) -> None:
    raise PolicyViolation("node", RULE_INSTALLED_CODE, "the run asked to install packages at the node; refused")


if __name__ == "__main__":
    main()
