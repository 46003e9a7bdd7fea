"""Run the reference app (benchmarks/reference_app) on Flower's simulation engine with a private SuperLink.

As :mod:`fedmodel.simulations.runner` does for fedmodel (its SuperLink launch and :func:`fedmodel.runs.follow`):
a private Flower home, no per-run dependency installation, a simulation SuperLink on free loopback
ports that is always stopped, and the run's real final status from ``flwr list`` (``flwr run``
exits 0 on failure). Ray is plain Flower's: ``RAY_ADDRESS=local`` lets Flower's ``ray.init`` start
a private instance when the ServerApp asks for it (no head started ahead, as fedmodel does).
Flower imports app code from the submitted app folder, so the folder handed to ``flwr run`` is a
copy of the reference package's sources with the run's values written into its pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from fedmodel.simulations.runner import launch_superlink, wait_until_up

from fedmodel.errors import SimulationError
from fedmodel.report.run_folder import RunFolder
from fedmodel.runs import flower_env, follow, free_port, stop_process, stream_log, submit

APP_SOURCE = Path(__file__).resolve().parent.parent / "reference_app"
CONNECTION = "local"


class ReferenceRunError(RuntimeError):
    """The reference run did not complete."""


def write_app(target: Path, values: dict[str, Any], source: Path = APP_SOURCE) -> Path:
    """Copy the app's sources to ``target`` and write ``values`` over its ``[tool.flwr.app.config]``."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pyproject = target / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    config = project["tool"]["flwr"]["app"]["config"]
    unknown = sorted(set(values) - set(config))
    if unknown:
        raise ValueError(f"unknown reference app config keys {unknown}; known: {sorted(config)}")
    config.update(values)
    pyproject.write_text(tomli_w.dumps(project), encoding="utf-8")
    return target


def run_reference(values: dict[str, Any], supernodes: int, log_dir: Path, *, timeout_s: float) -> str:
    """Run the app with ``values`` on ``supernodes`` simulated nodes; return Flower's final status.

    Raises ReferenceRunError when the run did not finish as ``finished:completed`` in ``timeout_s``.
    """
    home = Path(tempfile.mkdtemp(prefix="fedref-"))  # short: Ray's socket paths live under it
    superlink: subprocess.Popen[bytes] | None = None
    log_proc: subprocess.Popen[bytes] | None = None
    try:
        app_dir = write_app(home / "app", values)
        env = flower_env(home, {"default": CONNECTION, CONNECTION: {"address": ":local:"}}, ray_address="local",
                         RAY_TMPDIR=str(home), FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
                         FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
        superlink = launch_superlink(env, home)
        try:
            wait_until_up(superlink, env)
        except SimulationError as exc:
            raise ReferenceRunError(str(exc)) from None
        run_id = submit(app_dir, env, CONNECTION,
                        ["--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1"])
        log_proc = stream = stream_log(run_id, env, CONNECTION, log_dir / "flower.log")
        link, deadline = superlink, time.monotonic() + timeout_s
        # the app writes no progress events: Flower is asked when its log stream ends (follow)
        status, details = follow(run_id, env, CONNECTION, RunFolder(home / "no-events"), on_event=None,
                                 broken=lambda: _broken(link, deadline), stream_ended=lambda: stream.poll() is not None)
    finally:
        stop_process(log_proc)
        stop_process(superlink)
        if (home / "superlink.log").exists():
            shutil.copyfile(home / "superlink.log", log_dir / "superlink.log")
        shutil.rmtree(home, ignore_errors=True)
    if status != "finished:completed":
        raise ReferenceRunError(f"the reference run ended {status}: {details}; see {log_dir}")
    return status


def _broken(superlink: subprocess.Popen[bytes], deadline: float) -> str | None:
    if superlink.poll() is not None:
        return f"flower-superlink exited with code {superlink.returncode}"
    if time.monotonic() >= deadline:
        return "still running at the deadline"
    return None
