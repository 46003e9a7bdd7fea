"""The hostile coordinator's own machine: its ``flwr-serverapp`` runs the red team's ServerApp.

A coordinator controls what runs on its machine, so it needs no code in the FAB to run a hostile
ServerApp: it submits fedmodel's own pyproject-only FAB (naming ``fedmodel.server.app:app``, which a node's
guard accepts) and runs whatever it likes beside its SuperLink. The red-team harness models exactly
that: the coordinator's processes get this folder on ``PYTHONPATH`` (Python imports ``sitecustomize``
at start-up), and in a ``flwr-serverapp`` process Flower's ServerApp runner is wrapped so that a run
whose ``out`` folder holds a ``plan.json`` runs ``apps/hostile_server.py`` instead of the ServerApp the
FAB names. Every other run (``fedmodel train``) runs fedmodel's own ServerApp as usual.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

HOSTILE = Path(__file__).resolve().parent.parent / "apps" / "hostile_server.py"


def _install() -> None:
    import importlib
    import importlib.util

    # the module itself: ``import flwr.superlink.runtime.run_serverapp as x`` gives the function the package exports
    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")

    honest = runtime.run_

    def run_hostile_or_honest(*, grid: Any, context: Any, server_app_dir: str, server_app_attr: str | None = None,
                              loaded_server_app: Any = None) -> Any:
        out = str(context.run_config.get("out", ""))
        if out and (Path(out) / "plan.json").is_file():
            spec = importlib.util.spec_from_file_location("hostile_server", HOSTILE)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return honest(grid=grid, context=context, server_app_dir=server_app_dir, loaded_server_app=module.app)
        return honest(grid=grid, context=context, server_app_dir=server_app_dir, server_app_attr=server_app_attr,
                      loaded_server_app=loaded_server_app)

    runtime.run_ = run_hostile_or_honest


if sys.argv and os.path.basename(sys.argv[0]) == "flwr-serverapp":
    _install()
