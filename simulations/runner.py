"""Run a fedmodel simulation on Flower's simulation engine (Ray), start to finish.

The runner gives every simulation its own Flower home (no shared ``~/.flwr``), turns off Flower's
per-run dependency installation, starts a private local SuperLink on free loopback ports, submits
the run with ``flwr run``, follows the run folder's progress, checks the run's real final status
(``flwr run`` exits 0 even for a failed run) and always stops the SuperLink it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedmodel import __version__
from fedmodel.config import RunConfig
from fedmodel.errors import SimulationError
from fedmodel.report.run_folder import RunFolder, read_events

ProgressFn = Callable[[dict[str, Any]], None]
SUPERLINK_START_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class SimulationResult:
    """Where the run folder is and what its report says."""

    run_dir: Path
    report: dict[str, Any]


def app_pyproject(config: RunConfig) -> dict[str, Any]:
    """The Flower App declaration of a run: fedmodel's components, the run's resolved config.

    The components are imported from the installed packages, so the app needs no source files.
    """
    return {
        "project": {
            "name": "fedmodel-run", "version": __version__, "license": "Apache-2.0",
            "description": "A fedmodel simulation run", "dependencies": [],
        },
        "tool": {"flwr": {"app": {
            "publisher": "fedmodel",
            "components": {"serverapp": "server.app:app", "clientapp": "clients.app:app"},
            "config": config.to_mapping(),
        }}},
    }


def run_simulation(config: RunConfig, *, on_event: ProgressFn | None = None,
                   cpus_per_client: int = 1) -> SimulationResult:
    """Run ``config`` as a local simulation; raise SimulationError if the run did not complete."""
    started = time.time()
    run_dir = Path(config.out).absolute()
    config = config.replace(out=str(run_dir))
    if (run_dir / "report.json").exists():
        raise SimulationError(f"{run_dir} already holds a run (report.json); choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    home = Path(tempfile.mkdtemp(prefix="fedmodel-flwr-"))
    superlink: subprocess.Popen[bytes] | None = None
    log_proc: subprocess.Popen[bytes] | None = None
    try:
        app_dir = home / "app"
        app_dir.mkdir()
        (app_dir / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject(config)), encoding="utf-8")
        env = _flower_env(home)
        superlink = _start_superlink(env, home)
        run_id = _submit(app_dir, env, config.clients, cpus_per_client)
        log_file = (run_dir / "flower.log").open("wb")
        log_proc = subprocess.Popen([_tool("flwr"), "log", str(run_id), "--stream"], env=env, cwd=home,
                                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log_file.close()
        status, details = _follow(run_id, env, folder, superlink, on_event)
    finally:
        _stop(log_proc)
        _stop(superlink)
        _keep_superlink_log(home, run_dir)
        shutil.rmtree(home, ignore_errors=True)
    return _finish(folder, status, details, started)


def _finish(folder: RunFolder, status: str, details: str, started: float) -> SimulationResult:
    """Check the real outcome, add command-level timing to the report and re-render it."""
    if not folder.report_path.exists():
        raise SimulationError(
            f"the run ended ({status}{': ' + details if details else ''}) without writing "
            f"{folder.report_path}; see {folder.path / 'flower.log'} and {folder.path / 'superlink.log'}"
        )
    report = folder.read_report()
    events, _ = read_events(folder.progress_path)
    first_round = next((e["time"] for e in events if e["event"] == "round-start"), None)
    report["timing"] = {
        **report.get("timing", {}),
        "total_seconds": round(time.time() - started, 3),
        "startup_seconds": round(first_round - started, 3) if first_round else None,
    }
    report["flower_status"] = status
    if status != "finished:completed" and report.get("status") == "completed":
        report["status"], report["reason"] = "failed", f"Flower reports the run as {status}: {details}"
    folder.write_report(report)
    if report.get("status") != "completed":
        raise SimulationError(f"the simulation failed: {report.get('reason') or status}\nrun folder: {folder.path}")
    return SimulationResult(folder.path, report)


def _flower_env(home: Path) -> dict[str, str]:
    http_port, control_port = _free_port(), _free_port()
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    env.pop("RAY_ADDRESS", None)  # never join a stray cluster (the scale-out issue adds --ray-address)
    (home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": "local", "local": {"address": ":local:"}}}), encoding="utf-8"
    )
    return env


def _start_superlink(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    """Start a simulation SuperLink in its own process group and wait until it answers."""
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    cmd = [
        _tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
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
    _stop(proc)
    raise SimulationError(f"flower-superlink did not answer on 127.0.0.1:{port} within {SUPERLINK_START_TIMEOUT_S:.0f} s")


def _submit(app_dir: Path, env: dict[str, str], clients: int, cpus_per_client: int) -> int:
    federation = f"num-supernodes={clients} client-resources-num-cpus={cpus_per_client}"
    proc = subprocess.run(
        [_tool("flwr"), "run", str(app_dir), "--format", "json", "--federation-config", federation],
        env=env, cwd=app_dir.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SimulationError(f"flwr run did not start the run:\n{proc.stdout}{proc.stderr}") from None
    if not answer.get("success", False) or "run-id" not in answer:
        raise SimulationError(f"flwr run refused the run: {answer.get('error-message', answer)}")
    return int(answer["run-id"])


def _run_status(run_id: int, env: dict[str, str]) -> tuple[str, str]:
    proc = subprocess.run(
        [_tool("flwr"), "list", "--run-id", str(run_id), "--format", "json"],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    try:
        runs = json.loads(proc.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown", proc.stdout + proc.stderr
    if not runs:
        return "unknown", ""
    return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))


def _follow(run_id: int, env: dict[str, str], folder: RunFolder, superlink: subprocess.Popen[bytes],
            on_event: ProgressFn | None) -> tuple[str, str]:
    """Relay progress events until Flower says the run finished; return (status, details)."""
    offset, last_status_check = 0, 0.0
    while True:
        events, offset = read_events(folder.progress_path, offset)
        for event in events:
            if on_event is not None:
                on_event(event)
        if superlink.poll() is not None:
            return "superlink-exited", f"flower-superlink exited with code {superlink.returncode}"
        now = time.monotonic()
        if now - last_status_check > 2.0:
            last_status_check = now
            status, details = _run_status(run_id, env)
            if status.startswith("finished"):
                events, offset = read_events(folder.progress_path, offset)
                for event in events:
                    if on_event is not None:
                        on_event(event)
                return status, details
        time.sleep(POLL_INTERVAL_S)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a process and its whole process group: SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
        own = pgid == os.getpgid(0)
        (proc.terminate if own else lambda: os.killpg(pgid, signal.SIGTERM))()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            (proc.kill if own else lambda: os.killpg(pgid, signal.SIGKILL))()
            proc.wait(timeout=10)
        if not own:  # children (superexec, flwr-simulation, Ray workers) may outlive the leader
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except ProcessLookupError:
        pass


def _keep_superlink_log(home: Path, run_dir: Path) -> None:
    log = home / "superlink.log"
    if log.exists():
        shutil.copyfile(log, run_dir / "superlink.log")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    """A Flower console script from this interpreter's environment (works without an activated venv)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SimulationError(f"{name} not found; is flwr[simulation] installed in this environment?")
    return found
