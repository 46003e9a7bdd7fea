"""Run a fedmodel simulation on Flower's simulation engine (Ray), start to finish.

The runner gives every simulation its own Flower home (no shared ``~/.flwr``), turns off Flower's
per-run dependency installation, starts a private local SuperLink on free loopback ports (early:
:func:`local_superlink` lets it boot while ``fedmodel simulate`` checks the inputs), submits the run
as ``flwr run`` would, copies its log as ``flwr log --stream`` would and asks its status as ``flwr
ls`` would, all three in-process (:mod:`fedmodel.local_control`: no CLI process on the critical
path), follows the run folder's progress, checks the run's real final status (a failed run is still
"started") and always stops the SuperLink it started.

Ray: Flower's ``ray.init`` takes its address from ``RAY_ADDRESS`` in the SuperLink's environment
only (facts/ray-cluster.md). Without ``ray-address`` the runner starts a private Ray head (``ray
start --head --block``, its own ports and temp dir under the run's home) at the same moment as the
SuperLink and points ``RAY_ADDRESS`` at it: Ray's half-dozen daemons then boot while the SuperLink
and the ServerApp do (one core idle most of that time), instead of after the ServerApp
asked for them (about 6 s later on 2 cores); ``ray.init`` waits for a head still booting. The head
is stopped with the SuperLink. Its files go under the run's home, or under a short directory of its
own where the home's path (in a long ``TMPDIR``) is too long for Ray's sockets; only where neither
works does ``RAY_ADDRESS=local`` let Flower start Ray itself. With ``ray-address`` the cluster is checked first
(:mod:`fedmodel.simulations.cluster`) and Flower's actors run there. ``init-args-*`` are never set: they break
attaching to a cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from fedmodel.simulations.cluster import check_cluster, check_local

from fedmodel.config import RunConfig
from fedmodel.errors import SimulationError
from fedmodel.local_control import LocalControl, LogStream
from fedmodel.report.run_folder import RunFolder, read_events
from fedmodel.runs import (
    ProgressFn,
    RunResult,
    descendants,
    finish,
    flower_env,
    follow,
    free_port,
    new_run_folder,
    run_status,
    stop_processes,
    tool,
    write_app,
)
from fedmodel.simulations import ray_env

LOCAL = "local"
SUPERLINK_START_TIMEOUT_S = 60.0
PRIVATE_RAY_ENV = {
    # Flower's actors in plain workers (no PYTHONPATH runtime env: every local worker has that path
    # already): no second Python start per worker (simulations/ray_env.py)
    "RAY_RUNTIME_ENV_HOOK": ray_env.HOOK,
    # Ray would prestart one idle worker per CPU when the driver connects, beside the ones Flower's
    # actors ask for a moment later: measured, they cost CPU during round 1 and are never used.
    "RAY_prestart_worker_first_driver": "0",
}
RAY_HEAD_LOG = "ray-head.log"
LOG_DRAIN_S = 10.0
"""Seconds the log stream gets to copy the last lines of a finished run before it is stopped."""
STOPPED_LOG_WAIT_S = 3.0
"""Seconds the log stream of a run stopped early (Ctrl-C, a broken run) gets to end before it is cut."""
STOP_GRACE_S = 10.0
"""Seconds the SuperLink (and with it SuperExec and the ServerApp) gets to stop before it is killed."""
RAY_HEAD_GRACE_S = 1.0
"""Seconds the private Ray head gets to stop before it is killed: its graceful stop takes ~4 s on 2 cores,
and nothing of it is kept (its files go with the run's home)."""
MAX_RAY_TMPDIR_CHARS = 36  # Ray's AF_UNIX socket paths under <RAY_TMPDIR>/ray/session_*/sockets must stay < 108
SHORT_TMP = "/tmp"
"""Where a private Ray's files go when the run's home is too long for its sockets (a long ``TMPDIR``)."""


@dataclass(frozen=True)
class LocalSuperLink:
    """A simulation's private Flower home and the ``flower-superlink`` started in it (maybe still booting)."""

    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    started: float
    """When it was started (``time.time()``): the run's clock starts here."""
    control: LocalControl
    """Its Control API, in-process (Flower's client imported in the background from the start)."""
    ray_head: subprocess.Popen[bytes] | None = None
    """The run's private Ray head (None on a cluster, or where Flower starts Ray itself)."""


@contextmanager
def local_superlink(config: RunConfig) -> Iterator[LocalSuperLink]:
    """Start the run's private SuperLink now and stop it (and everything it started) on leaving.

    It boots (seconds of imports) while the caller goes on, e.g. checking the run's inputs: nothing
    is submitted before :func:`run_simulation`, and leaving early (a bad input) stops it unused.
    The workers' resources are checked first (``check_workers``): before anything starts.
    """
    started = time.time()
    check_workers(config)
    home = Path(tempfile.mkdtemp(prefix="fedmodel-flwr-"))
    proc: subprocess.Popen[bytes] | None = None
    head: subprocess.Popen[bytes] | None = None
    ray_root: Path | None = None
    try:
        ray_address, ray_root = config.ray_address or "local", _private_ray_root(config, home)
        if ray_root is not None:  # a private Ray: its own head, booting from now on
            head, ray_address = _launch_ray_head(home, ray_root)
        # ":local:" connects to the simulation SuperLink on these ports, which we start (and stop) ourselves
        env = flower_env(home, {"default": LOCAL, LOCAL: {"address": ":local:"}},
                         ray_address=ray_address, **({"RAY_TMPDIR": str(ray_root)} if ray_root else {}),
                         **({} if config.ray_address else PRIVATE_RAY_ENV),
                         FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
                         FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
        proc = launch_superlink(env, home)
        control = LocalControl(env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"])
        control.preload()
        yield LocalSuperLink(home, env, proc, started, control, head)
    finally:
        stop_processes((proc, STOP_GRACE_S), (head, RAY_HEAD_GRACE_S))
        shutil.rmtree(home, ignore_errors=True)
        if ray_root is not None and ray_root != home:
            shutil.rmtree(ray_root, ignore_errors=True)


def run_simulation(config: RunConfig, *, on_event: ProgressFn | None = None,
                   superlink: LocalSuperLink | None = None) -> RunResult:
    """Run ``config`` as a simulation; raise SimulationError if the run did not complete.

    The workers run on a private local Ray, or on the cluster at ``config.ray_address`` (checked
    first: RayClusterError when it is unreachable, too small or runs another fedmodel version).
    ``superlink`` is one :func:`local_superlink` started earlier for this config; without it one is
    started here.
    """
    if superlink is None:
        with local_superlink(config) as link:
            return run_simulation(config, on_event=on_event, superlink=link)
    config, folder = new_run_folder(config)
    run_dir = folder.path
    home, env, control = superlink.home, superlink.env, superlink.control
    log: LogStream | None = None
    try:
        app_dir = write_app(home / "app", config)
        wait_until_up(superlink.proc, env)
        run_id = control.submit(app_dir, federation_settings(config))
        log = control.stream_log(run_id, run_dir / "flower.log")
        serverapp = ServerAppWatch(superlink.proc.pid, folder)
        status, details = follow(run_id, env, LOCAL, folder, on_event=on_event,
                                 broken=lambda: _exited(superlink.proc) or _head_exited(superlink.ray_head)
                                 or serverapp(),
                                 stream_ended=log.ended, status=lambda: _flower_status(control, run_id, env))
        if status.startswith("finished"):  # the stream ends by itself once it has every line of a finished run
            log.wait(LOG_DRAIN_S)
    finally:
        if log is not None:
            if not log.ended():  # interrupted or broken: the SuperLink stops gracefully only once the stream is closed
                # (else it takes its whole grace period), and it closes a stopped run's stream itself
                threading.Thread(target=control.stop_run, args=(run_id,), daemon=True).start()  # a hung one: no wait
                log.wait(STOPPED_LOG_WAIT_S)
            log.stop()
        _keep_ray_head_log(superlink.ray_head, home, run_dir)  # before it is stopped: only if it died
        stop_processes((superlink.proc, STOP_GRACE_S), (superlink.ray_head, RAY_HEAD_GRACE_S))
        _keep_superlink_log(home, run_dir)
    return finish(folder, status, details, superlink.started,
                  logs=f"{run_dir / 'flower.log'} and {run_dir / 'superlink.log'}")


def check_workers(config: RunConfig) -> None:
    """Before anything starts: the cluster (or this machine) must fit a worker and run this fedmodel."""
    if config.ray_address:
        check_cluster(config.ray_address, config.cpus_per_worker, config.gpus_per_worker)
    else:
        check_local(config.cpus_per_worker, config.gpus_per_worker)


def federation_settings(config: RunConfig) -> dict[str, int | float]:
    """Flower's simulation settings (``SimulationConfig`` fields, ``flwr run --federation-config``): one node per
    owner (or ``nodes`` hosting cohorts), worker resources, no init-args."""
    return {"num_supernodes": config.flower_nodes, "client_resources_num_cpus": config.cpus_per_worker,
            "client_resources_num_gpus": float(config.gpus_per_worker)}


def _flower_status(control: LocalControl, run_id: int, env: dict[str, str]) -> tuple[str, str]:
    """Flower's status of the run, asked in-process; ``flwr list``'s answer if that request fails."""
    try:
        return control.status(run_id)
    except Exception:  # noqa: BLE001  (any failure of the in-process client: the CLI's view instead)
        return run_status(run_id, env, LOCAL)


def _private_ray_root(config: RunConfig, home: Path) -> Path | None:
    """Where the run's private Ray keeps its session files (and finds no ``ray_current_cluster``).

    The run's home when Ray's socket paths fit under it; else a short directory of its own under
    :data:`SHORT_TMP` (the home sits in ``TMPDIR``, and Ray would put its sockets there too: a long
    ``TMPDIR`` failed every run); None on a cluster, or where no short directory can be made (Flower
    then starts Ray itself, ``RAY_ADDRESS=local``).
    """
    if config.ray_address:
        return None
    if len(str(home)) <= MAX_RAY_TMPDIR_CHARS:
        return home
    try:
        root = Path(tempfile.mkdtemp(prefix="fm-ray-", dir=SHORT_TMP))
    except OSError:
        return None
    if len(str(root)) > MAX_RAY_TMPDIR_CHARS:
        shutil.rmtree(root, ignore_errors=True)
        return None
    return root


class ServerAppWatch:
    """Says at once when the run's ``flwr-simulation`` process (ServerApp, Ray driver) died without ``done``.

    Flower marks such a run failed only when the task's heartbeat times out (about a minute); the
    process is a descendant of our SuperLink, so its end is seen here within ``LOOK_EVERY_S``. An exit
    after the ServerApp wrote ``done`` is the normal end: Flower's status then says how it went.
    """

    LOOK_EVERY_S = 2.0

    def __init__(self, superlink_pid: int, folder: RunFolder) -> None:
        self.superlink_pid, self.folder = superlink_pid, folder
        self.pid: int | None = None
        self.looked = 0.0

    def __call__(self) -> str | None:
        if time.monotonic() - self.looked < self.LOOK_EVERY_S:
            return None
        self.looked = time.monotonic()
        if self.pid is None:
            self.pid = descendant_running(self.superlink_pid, "flwr-simulation")
            return None
        if _running(self.pid):
            return None
        events, _ = read_events(self.folder.progress_path)
        if any(event.get("event") == "done" for event in events):
            return None
        return "flwr-simulation (the ServerApp) exited before the run finished; killed, or out of memory?"


def descendant_running(pid: int, name: str) -> int | None:
    """A running descendant of ``pid`` whose command line holds ``name``, if any."""
    for child in descendants(pid):
        try:
            if name in " ".join(child.cmdline()) and _running(child.pid):
                return child.pid
        except psutil.Error:  # exited, or not ours to read
            continue
    return None


def _running(pid: int) -> bool:
    """Alive and not a zombie (exited, not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # no /proc (not Linux): alive as far as signals tell
    return state != "Z"


def _exited(proc: subprocess.Popen[bytes] | None) -> str | None:
    if proc is not None and proc.poll() is not None:
        return f"flower-superlink exited with code {proc.returncode}"
    return None


def _launch_ray_head(home: Path, ray_root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the run's private Ray head (not waiting for it) and return it with its GCS address.

    Every port it opens is a free one (two simulations on one machine never meet), its session
    files stay under ``ray_root/ray`` (no ``ray_current_cluster`` for anyone else to join; its log
    goes to ``home``), it prestarts no idle workers (:data:`PRIVATE_RAY_ENV`), runs no autoscaler and
    shows no dashboard. ``--block`` keeps it in the foreground, in a session of its own, so stopping it
    stops its daemons and workers.
    """
    port = free_port()
    cmd = [
        tool("ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
        "--temp-dir", str(ray_root / "ray"), "--include-dashboard", "false", "--disable-usage-stats",
        "--no-monitor",  # no autoscaler for a fixed one-machine Ray (one Python daemon less: ~1 CPU s, ~60 MB)
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--ray-client-server-port", str(free_port()),  # unused (Flower's driver joins the GCS), never 10001
    ]
    env = {**os.environ, **PRIVATE_RAY_ENV, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(ray_root)}
    env.pop("RAY_ADDRESS", None)
    with (home / RAY_HEAD_LOG).open("wb") as log_file:
        proc = subprocess.Popen(cmd, env=env, cwd=home, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, f"127.0.0.1:{port}"


def _head_exited(head: subprocess.Popen[bytes] | None) -> str | None:
    if head is not None and head.poll() is not None:
        return f"the run's private Ray head (ray start --head) exited with code {head.returncode}; see {RAY_HEAD_LOG}"
    return None


def _keep_ray_head_log(head: subprocess.Popen[bytes] | None, home: Path, run_dir: Path) -> None:
    """The head's log goes to the run folder when the head ended on its own (a failed start, say)."""
    log = home / RAY_HEAD_LOG
    if head is not None and head.poll() is not None and log.exists():
        shutil.copyfile(log, run_dir / RAY_HEAD_LOG)


def launch_superlink(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    """Start a simulation SuperLink in its own process group (not waiting for it: see :func:`wait_until_up`)."""
    cmd = [
        tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
        "--control-api-address", f"127.0.0.1:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
        "--host", "127.0.0.1", "--port", env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"],
        "--log-file", str(home / "superlink.log"),
    ]
    return subprocess.Popen(cmd, env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_until_up(proc: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    """Wait until the SuperLink answers on its HTTP port; SimulationError if it exits or stays silent."""
    port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    deadline = time.monotonic() + SUPERLINK_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationError(f"flower-superlink exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SimulationError(f"flower-superlink did not answer on 127.0.0.1:{port} within {SUPERLINK_START_TIMEOUT_S:.0f} s")


def _keep_superlink_log(home: Path, run_dir: Path) -> None:
    log = home / "superlink.log"
    if log.exists():
        shutil.copyfile(log, run_dir / "superlink.log")
