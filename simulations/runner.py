"""Run a fedmodel simulation on Flower's simulation engine (Ray), start to finish.

The runner gives every simulation its own Flower home (no shared ``~/.flwr``), turns off Flower's
per-run dependency installation, starts a private local SuperLink on free loopback ports, submits
the run with ``flwr run``, follows the run folder's progress, checks the run's real final status
(``flwr run`` exits 0 even for a failed run) and always stops the SuperLink it started.

Ray: Flower's ``ray.init`` takes its address from ``RAY_ADDRESS`` in the SuperLink's environment
only (facts/ray-cluster.md). Without ``ray-address`` the SuperLink gets ``RAY_ADDRESS=local`` and its
own ``RAY_TMPDIR``, so Ray starts a private instance and never joins a cluster that ``ray start
--head`` registered on this machine; with it, the cluster is checked first (:mod:`simulations.cluster`)
and Flower's actors run there. ``init-args-*`` are never set: they break attaching to a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from fedmodel.config import RunConfig
from fedmodel.errors import SimulationError
from fedmodel.runs import (
    ProgressFn,
    RunResult,
    finish,
    flower_env,
    new_run_folder,
    follow,
    free_port,
    stop_process,
    stream_log,
    submit,
    tool,
    write_app,
)
from simulations.cluster import check_cluster, check_local

LOCAL = "local"
SUPERLINK_START_TIMEOUT_S = 60.0
MAX_RAY_TMPDIR_CHARS = 36  # Ray's AF_UNIX socket paths under <RAY_TMPDIR>/ray/session_*/sockets must stay < 108


def run_simulation(config: RunConfig, *, on_event: ProgressFn | None = None) -> RunResult:
    """Run ``config`` as a simulation; raise SimulationError if the run did not complete.

    The workers run on a private local Ray, or on the cluster at ``config.ray_address`` (checked
    first: RayClusterError when it is unreachable, too small or runs another fedmodel version).
    """
    started = time.time()
    check_workers(config)
    config, folder = new_run_folder(config)
    run_dir = folder.path
    home = Path(tempfile.mkdtemp(prefix="fedmodel-flwr-"))
    superlink: subprocess.Popen[bytes] | None = None
    log_proc: subprocess.Popen[bytes] | None = None
    try:
        app_dir = write_app(home / "app", config)
        # ":local:" connects to the simulation SuperLink on these ports, which we start (and stop) ourselves
        env = flower_env(home, {"default": LOCAL, LOCAL: {"address": ":local:"}},
                         ray_address=config.ray_address or "local", **_private_ray_dir(config, home),
                         FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
                         FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
        superlink = _start_superlink(env, home)
        run_id = submit(app_dir, env, LOCAL, ["--federation-config", federation_config(config)])
        log_proc = stream_log(run_id, env, LOCAL, run_dir / "flower.log")
        status, details = follow(run_id, env, LOCAL, folder, on_event=on_event,
                                 broken=lambda: _exited(superlink))
    finally:
        stop_process(log_proc)
        stop_process(superlink)
        _keep_superlink_log(home, run_dir)
        shutil.rmtree(home, ignore_errors=True)
    return finish(folder, status, details, started,
                  logs=f"{run_dir / 'flower.log'} and {run_dir / 'superlink.log'}")


def check_workers(config: RunConfig) -> None:
    """Before anything starts: the cluster (or this machine) must fit a worker and run this fedmodel."""
    if config.ray_address:
        check_cluster(config.ray_address, config.cpus_per_worker, config.gpus_per_worker)
    else:
        check_local(config.cpus_per_worker, config.gpus_per_worker)


def federation_config(config: RunConfig) -> str:
    """Flower's simulation settings: one node per owner (or ``nodes`` hosting cohorts), worker resources, no init-args."""
    return (f"num-supernodes={config.flower_nodes} client-resources-num-cpus={config.cpus_per_worker} "
            f"client-resources-num-gpus={float(config.gpus_per_worker)!r}")


def _private_ray_dir(config: RunConfig, home: Path) -> dict[str, str]:
    """A private Ray keeps its session files (and finds no ``ray_current_cluster``) under the run's home."""
    if config.ray_address or len(str(home)) > MAX_RAY_TMPDIR_CHARS:
        return {}  # RAY_ADDRESS=local alone already starts a new instance
    return {"RAY_TMPDIR": str(home)}


def _exited(proc: subprocess.Popen[bytes] | None) -> str | None:
    if proc is not None and proc.poll() is not None:
        return f"flower-superlink exited with code {proc.returncode}"
    return None


def _start_superlink(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    """Start a simulation SuperLink in its own process group and wait until it answers."""
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    cmd = [
        tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        "--control-api-address", f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
        "--host", "127.0.0.1", "--port", port, "--log-file", str(home / "superlink.log"),
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + SUPERLINK_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise SimulationError(f"flower-superlink did not answer on 127.0.0.1:{port} within {SUPERLINK_START_TIMEOUT_S:.0f} s")


def _keep_superlink_log(home: Path, run_dir: Path) -> None:
    log = home / "superlink.log"
    if log.exists():
        shutil.copyfile(log, run_dir / "superlink.log")
