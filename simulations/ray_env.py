"""Ray's runtime-env hook for a simulation's private Ray: Flower's actors run in plain workers.

Flower's Ray backend calls ``ray.init(runtime_env={"env_vars": {"PYTHONPATH": <the driver's
sys.path>}})`` so that workers on other machines find the app's code. On the run's private Ray
(this machine, started from this environment by :mod:`fedmodel.simulations.runner`) every worker already
has that path: the workers inherit the environment the head (or Flower's driver) was started with,
and the Flower App fedmodel submits is a ``pyproject.toml`` only (its code is the installed
``fedmodel.server`` / ``fedmodel.clients`` packages). That runtime env costs each worker a second Python start
(``setup_worker.py`` imports Ray, asks the runtime-env agent, then execs the real worker: ~1.3 CPU
s each) and keeps Ray's prestarted workers (an empty runtime env) from ever serving Flower's
actors. The runner sets ``RAY_RUNTIME_ENV_HOOK`` to :func:`drop_pythonpath` for a private Ray only;
on a cluster (``ray-address``) Flower's runtime env is left as it is.
"""

from __future__ import annotations

from typing import Any

HOOK = f"{__name__}.drop_pythonpath"
"""The value of ``RAY_RUNTIME_ENV_HOOK`` (Ray loads it by its dotted name in the driver)."""


def drop_pythonpath(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
    """The driver's runtime env without ``env_vars["PYTHONPATH"]`` (and without ``env_vars`` once it is empty)."""
    if not runtime_env or "PYTHONPATH" not in (runtime_env.get("env_vars") or {}):
        return runtime_env
    env_vars = {k: v for k, v in runtime_env["env_vars"].items() if k != "PYTHONPATH"}
    rest = {k: v for k, v in runtime_env.items() if k != "env_vars"}
    return {**rest, "env_vars": env_vars} if env_vars else rest
