"""Submitting a run with Flower's ``flwr`` CLI and following it to its real end.

Shared by the local simulation and by ``fedmodel train`` against a deployed coordinator. The run
itself is Flower's; this module writes the Flower App declaration, submits it, relays the run
folder's progress events, asks Flower for the final status (``flwr run`` exits 0 even when a run
failed) and completes the report with command-level timing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import tomli_w

from fedmodel import __version__
from fedmodel.config import RunConfig
from fedmodel.errors import SimulationError
from fedmodel.report.run_folder import RunFolder, read_events

ProgressFn = Callable[[dict[str, Any]], None]
POLL_INTERVAL_S = 0.5
STATUS_INTERVAL_S = 2.0
"""Wait before asking Flower again after a sign of the end (or, without the log stream, first wait)."""
STATUS_MAX_INTERVAL_S = 60.0
"""Longest wait between two status questions without a live log stream."""
STATUS_SAFETY_INTERVAL_S = 300.0
"""Wait between two status questions while the log stream lives: the safety net for a stream that hangs."""


@dataclass(frozen=True)
class RunResult:
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
            "description": "A fedmodel run", "dependencies": [],
        },
        "tool": {"flwr": {"app": {
            "publisher": "fedmodel",
            "components": {"serverapp": "fedmodel.server.app:app", "clientapp": "fedmodel.clients.app:app"},
            "config": config.to_mapping(),
        }}},
    }


def new_run_folder(config: RunConfig) -> tuple[RunConfig, RunFolder]:
    """The run's folder made absolute (the ServerApp runs elsewhere) and created; a finished run is never overwritten.

    A new run gets its own ``run-id`` (deployed nodes keep their privacy state of the run under it);
    a resumed one keeps its folder and id (:func:`fedmodel.resume.resume_config` checked them).
    """
    run_dir = Path(config.out).absolute()
    if config.resume:
        return config.replace(out=str(run_dir)), RunFolder(run_dir)
    if (run_dir / "report.json").exists():
        raise SimulationError(f"{run_dir} already holds a run (report.json); choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    return config.replace(out=str(run_dir), run_id=config.run_id or uuid.uuid4().hex), RunFolder(run_dir)


def write_app(app_dir: Path, config: RunConfig) -> Path:
    """Write the run's Flower App (a pyproject.toml only) into ``app_dir``."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject(config)), encoding="utf-8")
    return app_dir


def flower_env(home: Path, connections: dict[str, Any], *, ray_address: str | None = None,
               **extra: str) -> dict[str, str]:
    """Environment for Flower's tools with a private FLWR_HOME holding ``connections``.

    Runtime dependency installation is off (it would install the app's dependencies, Ray
    included, into a throwaway environment on every run). ``RAY_ADDRESS`` is the only way to point
    Flower's ``ray.init`` at a cluster, and it must be there when the SuperLink starts: it is
    ``ray_address`` when given (``"local"`` makes Ray start a new private instance), never the caller's.
    """
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        **extra,
    })
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(tomli_w.dumps({"superlink": connections}), encoding="utf-8")
    return env


def submit(app_dir: Path, env: dict[str, str], connection: str, extra_args: list[str] | None = None) -> int:
    """``flwr run`` the app on ``connection``; the run id, or SimulationError with Flower's reason."""
    proc = subprocess.run(
        [tool("flwr"), "run", str(app_dir), connection, "--format", "json", *(extra_args or [])],
        env=env, cwd=app_dir.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SimulationError(f"flwr run did not start the run:\n{proc.stdout}{proc.stderr}") from None
    if not answer.get("success", False) or "run-id" not in answer:
        raise SimulationError(f"flwr run refused the run: {answer.get('error-message', answer)}")
    return int(answer["run-id"])


def run_status(run_id: int, env: dict[str, str], connection: str) -> tuple[str, str]:
    """(status, details) of a run, e.g. ``finished:completed``; ``unknown`` if Flower cannot say."""
    proc = subprocess.run(
        [tool("flwr"), "list", connection, "--run-id", str(run_id), "--format", "json"],
        env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    try:
        runs = json.loads(proc.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown", proc.stdout + proc.stderr
    if not runs:
        return "unknown", ""
    return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))


def stop_run(run_id: int, env: dict[str, str], connection: str) -> bool:
    """``flwr stop`` a run (best effort, 30 s); True if Flower confirmed it."""
    try:
        proc = subprocess.run([tool("flwr"), "stop", str(run_id), connection, "--format", "json"], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
        return bool(json.loads(proc.stdout).get("success"))
    except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError):
        return False


def stream_log(run_id: int, env: dict[str, str], connection: str, path: Path) -> subprocess.Popen[bytes]:
    """Copy the run's Flower log into ``path`` in the background (``flwr log --stream``)."""
    with path.open("wb") as log_file:
        return subprocess.Popen([tool("flwr"), "log", str(run_id), connection, "--stream"], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def follow(run_id: int, env: dict[str, str], connection: str, folder: RunFolder, *,
           on_event: ProgressFn | None, broken: Callable[[], str | None] = lambda: None,
           stream_ended: Callable[[], bool] | None = None,
           status: Callable[[], tuple[str, str]] | None = None) -> tuple[str, str]:
    """Relay progress events until Flower says the run finished; return (status, details).

    Asking Flower (``flwr list``) costs a process and seconds of CPU, so it is asked only when the
    run may have ended: at once when ``stream_ended()`` turns true (``flwr log --stream`` exits when
    Flower marks the run finished, also when the ServerApp died without a word), within
    ``STATUS_INTERVAL_S`` of the ServerApp's ``done`` event when there is no stream to wait for,
    otherwise at intervals growing from ``STATUS_INTERVAL_S`` to ``STATUS_MAX_INTERVAL_S``, and
    every ``STATUS_SAFETY_INTERVAL_S`` while the stream lives. ``broken`` is polled every
    ``POLL_INTERVAL_S``: a non-empty answer (e.g. "the SuperLink exited") ends the wait. ``status``,
    when given, asks Flower cheaply (no process, e.g. in-process: :mod:`fedmodel.local_control`): it is then asked every
    ``POLL_INTERVAL_S`` from the ``done`` event on, without waiting for the stream.
    """
    ask = status if status is not None else (lambda: run_status(run_id, env, connection))
    cheap = status is not None
    offset, done, stream_seen = 0, False, False
    interval = STATUS_INTERVAL_S if stream_ended is None else STATUS_SAFETY_INTERVAL_S
    next_check = time.monotonic() + interval

    def relay() -> bool:
        nonlocal offset
        events, offset = read_events(folder.progress_path, offset)
        for event in events:
            if on_event is not None:
                on_event(event)
        return any(event.get("event") == "done" for event in events)

    while True:
        now = time.monotonic()
        if relay() and not done:
            done = True
            if cheap:
                next_check = now
            elif stream_ended is None or stream_seen:
                next_check = min(next_check, now + STATUS_INTERVAL_S)
        problem = broken()
        if problem:
            return "broken", problem
        if stream_ended is not None and not stream_seen and stream_ended():
            # ask now; if the run goes on, the stream broke: ask from STATUS_INTERVAL_S on, backing off
            stream_seen, next_check, interval = True, now, STATUS_INTERVAL_S / 2
        if now >= next_check:
            state, details = ask()
            if state.startswith("finished"):
                relay()
                return state, details
            live = stream_ended is not None and not stream_seen
            if done and cheap:
                interval = POLL_INTERVAL_S
            elif live:
                interval = STATUS_SAFETY_INTERVAL_S
            elif done:  # nothing else will say when it ends, and it ends within seconds now
                interval = STATUS_INTERVAL_S
            else:
                interval = min(interval * 2, STATUS_MAX_INTERVAL_S)
            next_check = now + interval
        time.sleep(POLL_INTERVAL_S)


def finish(folder: RunFolder, status: str, details: str, started: float, logs: str) -> RunResult:
    """Check the real outcome, add command-level timing to the report and re-render it.

    Raises SimulationError naming the reason when the run did not complete.
    """
    if not folder.report_path.exists():
        raise SimulationError(
            f"the run ended ({status}{': ' + details if details else ''}) without writing "
            f"{folder.report_path}; see {logs}"
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
    folder.write_report(report, redraw_plots=False)  # timing and status change no curve
    if report.get("status") != "completed":
        raise SimulationError(f"the run failed: {report.get('reason') or status}\nrun folder: {folder.path}")
    return RunResult(folder.path, report)


def descendants(pid: int) -> list[psutil.Process]:
    """Every descendant of ``pid`` (psutil), children before their own children; empty if ``pid`` is gone.

    Read while the tree is still linked: a dead parent's children are adopted by init and are no
    longer found.
    """
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def descendant_groups(pid: int) -> set[int]:
    """Process groups of every descendant of ``pid``, except this process's own group.

    Flower's SuperLink starts SuperExec in a session of its own, and SuperExec starts flwr-simulation
    (and Ray) there: killing the SuperLink's group alone leaves them running as orphans. Collect the
    groups while the tree is still linked.
    """
    groups = set()
    for child in descendants(pid):
        try:
            groups.add(os.getpgid(child.pid))
        except ProcessLookupError:  # exited since the tree was read
            continue
    return groups - {os.getpgid(0)}


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """Stop a process and, if it leads its own process group, the whole group: SIGTERM, then SIGKILL.

    The process groups its descendants started for themselves are killed afterwards (see
    :func:`descendant_groups`), so nothing it started outlives it.
    """
    if proc is None or proc.poll() is not None:
        return
    orphans = descendant_groups(proc.pid)
    try:
        pgid = os.getpgid(proc.pid)
        own_group = pgid == os.getpgid(0)
        if own_group:
            proc.terminate()
        else:
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            if own_group:
                proc.kill()
            else:
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
        if not own_group:  # children (superexec, flwr-simulation, Ray workers) may outlive the leader
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    except ProcessLookupError:
        pass
    for group in orphans:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def stop_processes(*stops: tuple[subprocess.Popen[bytes] | None, float]) -> None:
    """:func:`stop_process` each ``(process, grace_s)`` at the same time (their graceful stops overlap)."""
    threads = [threading.Thread(target=stop_process, args=stop, daemon=True) for stop in stops[1:]]
    for thread in threads:
        thread.start()
    if stops:
        stop_process(*stops[0])
    for thread in threads:
        thread.join()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """A Flower console script from this interpreter's environment (works without an activated venv)."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SimulationError(f"{name} not found; is flwr[simulation] installed in this environment?")
    return found
