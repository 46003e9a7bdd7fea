"""Run the reference app (benchmarks/reference_app) on Flower's simulation engine with a private SuperLink.

As :mod:`simulations.runner` does for fedmodel: a private Flower home, no per-run dependency
installation, a private local Ray, a simulation SuperLink on free loopback ports that is always
stopped, and the run's real final status from ``flwr list`` (``flwr run`` exits 0 on failure).
Flower imports app code from the submitted app folder, so the folder handed to ``flwr run`` is a
copy of the reference package's sources with the run's values written into its pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from fedmodel.runs import (
    POLL_INTERVAL_S,
    STATUS_INTERVAL_S,
    STATUS_SAFETY_INTERVAL_S,
    flower_env,
    free_port,
    run_status,
    stop_process,
    stream_log,
    submit,
    tool,
)

APP_SOURCE = Path(__file__).resolve().parent.parent / "reference_app"
CONNECTION = "local"
SUPERLINK_START_TIMEOUT_S = 60.0


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
        superlink = _start_superlink(env, home)
        run_id = submit(app_dir, env, CONNECTION,
                        ["--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1"])
        log_proc = stream_log(run_id, env, CONNECTION, log_dir / "flower.log")
        status, details = _wait(run_id, env, superlink, log_proc, time.monotonic() + timeout_s)
    finally:
        stop_process(log_proc)
        stop_process(superlink)
        if (home / "superlink.log").exists():
            shutil.copyfile(home / "superlink.log", log_dir / "superlink.log")
        shutil.rmtree(home, ignore_errors=True)
    if status != "finished:completed":
        raise ReferenceRunError(f"the reference run ended {status}: {details}; see {log_dir}")
    return status


def _wait(run_id: int, env: dict[str, str], superlink: subprocess.Popen[bytes], stream: subprocess.Popen[bytes],
          deadline: float) -> tuple[str, str]:
    """Flower's final status, asked when the log stream ends (as fedmodel.runs.follow does: no CPU taken
    from the run by a ``flwr list`` every few seconds), every 2 s after that, and every 5 min meanwhile."""
    next_check = time.monotonic() + STATUS_SAFETY_INTERVAL_S
    while time.monotonic() < deadline:
        if superlink.poll() is not None:
            return "broken", f"flower-superlink exited with code {superlink.returncode}"
        if stream.poll() is not None or time.monotonic() >= next_check:
            status, details = run_status(run_id, env, CONNECTION)
            if status.startswith("finished"):
                return status, details
            wait = STATUS_INTERVAL_S if stream.poll() is not None else STATUS_SAFETY_INTERVAL_S
            next_check = time.monotonic() + wait
        time.sleep(POLL_INTERVAL_S)
    return "timeout", "still running at the deadline"


def _start_superlink(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    """A simulation SuperLink in its own process group, once it answers its health check."""
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    cmd = [tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--control-api-address", f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
           "--host", "127.0.0.1", "--port", port, "--log-file", str(home / "superlink.log")]
    proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + SUPERLINK_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ReferenceRunError(f"flower-superlink exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise ReferenceRunError(f"flower-superlink did not answer on 127.0.0.1:{port} within {SUPERLINK_START_TIMEOUT_S:.0f} s")
