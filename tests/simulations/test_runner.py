"""The simulation runner's own SuperLink: started early, always stopped (no Flower process is started here)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from fedmodel.config import RunConfig
from fedmodel.report.run_folder import RunFolder
from fedmodel.simulations import runner


def test_local_superlink_stops_its_process_and_removes_its_home_when_the_caller_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def launch(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
        assert env["FLWR_HOME"] == str(home) and (home / "config.toml").exists()
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                        start_new_session=True))
        return started[0]

    monkeypatch.setattr(runner, "launch_superlink", launch)
    homes: list[Path] = []
    with pytest.raises(ValueError, match="bad input"):
        with runner.local_superlink(RunConfig(clients=2, rounds=1)) as link:
            homes.append(link.home)
            assert link.proc.poll() is None
            raise ValueError("bad input")
    try:
        assert started[0].wait(timeout=30) is not None
        assert not homes[0].exists()
    finally:
        started[0].kill()


# A stand-in for the SuperLink: starts a "flwr-simulation" child, writes its pid, reaps it when it dies.
SUPERLINK = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "flwr-simulation"])
open(sys.argv[1], "w").write(str(child.pid))
child.wait()
time.sleep(600)
"""


@pytest.mark.parametrize("done_first", [False, True], ids=["died", "finished"])
def test_serverapp_watch_names_a_flwr_simulation_that_died_without_done(tmp_path: Path, done_first: bool) -> None:
    pid_file = tmp_path / "child.pid"
    superlink = subprocess.Popen([sys.executable, "-c", SUPERLINK, str(pid_file)], start_new_session=True)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the stand-in SuperLink did not start its child"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        watch = runner.ServerAppWatch(superlink.pid, folder)
        watch.LOOK_EVERY_S = 0.0
        while watch.pid is None:
            assert watch() is None and time.monotonic() < deadline, "the flwr-simulation child was not found"
        assert watch.pid == child and watch() is None  # alive
        if done_first:
            folder.event("done", status="completed")
        os.kill(child, signal.SIGKILL)
        answer = watch()
        while answer is None and not done_first and time.monotonic() < deadline:  # until it is reaped
            answer = watch()
        if done_first:
            time.sleep(0.5)
            assert watch() is None  # a normal end: Flower's status tells how it went
        else:
            assert answer is not None and "flwr-simulation" in answer
    finally:
        os.killpg(superlink.pid, signal.SIGKILL)
        superlink.wait()


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def test_a_private_ray_head_boots_beside_the_superlink_and_stops_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[tuple[Path, subprocess.Popen[bytes]]] = []
    links: list[tuple[dict[str, str], subprocess.Popen[bytes]]] = []

    def launch_head(home: Path, ray_root: Path) -> tuple[subprocess.Popen[bytes], str]:
        assert not links, "the head starts first: it boots while the SuperLink does"
        heads.append((home, sleeper()))
        return heads[-1][1], "127.0.0.1:45678"

    def launch_superlink(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
        links.append((env, sleeper()))
        return links[-1][1]

    monkeypatch.setattr(runner, "_launch_ray_head", launch_head)
    monkeypatch.setattr(runner, "launch_superlink", launch_superlink)
    with pytest.raises(ValueError, match="bad input"):
        with runner.local_superlink(RunConfig(clients=2, rounds=1)) as link:
            assert link.ray_head is heads[0][1] and link.home == heads[0][0]
            assert links[0][0]["RAY_ADDRESS"] == "127.0.0.1:45678"  # Flower's ray.init joins the private head
            assert runner._head_exited(link.ray_head) is None
            raise ValueError("bad input")
    try:
        assert heads[0][1].wait(timeout=30) is not None and links[0][1].wait(timeout=30) is not None
    finally:
        heads[0][1].kill()
        links[0][1].kill()


def test_a_home_too_long_for_rays_sockets_gets_a_short_ray_directory_of_its_own(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    heads: list[tuple[Path, Path]] = []
    envs: list[dict[str, str]] = []
    monkeypatch.setattr(runner, "_launch_ray_head",
                        lambda home, ray_root: heads.append((home, ray_root)) or (sleeper(), "127.0.0.1:45678"))
    monkeypatch.setattr(runner, "launch_superlink", lambda env, home: envs.append(env) or sleeper())
    monkeypatch.setattr(runner, "check_workers", lambda config: None)
    long_tmp = tmp_path / ("x" * runner.MAX_RAY_TMPDIR_CHARS)  # a long TMPDIR: the run's home lands in it
    long_tmp.mkdir()
    short_tmp = Path(tempfile.mkdtemp(prefix="s-", dir=runner.SHORT_TMP if Path(runner.SHORT_TMP).is_dir() else None))
    monkeypatch.setattr(runner, "SHORT_TMP", str(short_tmp))
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    try:
        with runner.local_superlink(RunConfig(clients=2, rounds=1)) as link:
            (home, ray_root), = heads
            assert link.home == home and str(home).startswith(str(long_tmp))
            assert ray_root.parent == short_tmp and len(str(ray_root)) <= runner.MAX_RAY_TMPDIR_CHARS
            assert envs[0]["RAY_TMPDIR"] == str(ray_root) and envs[0]["RAY_ADDRESS"] == "127.0.0.1:45678"
        assert not ray_root.exists() and not home.exists()  # both removed with the run
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)


def test_without_a_short_directory_or_with_a_cluster_flower_starts_or_joins_ray_itself(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    envs: list[dict[str, str]] = []
    monkeypatch.setattr(runner, "_launch_ray_head", lambda home, ray_root: pytest.fail("no private head expected"))
    monkeypatch.setattr(runner, "launch_superlink", lambda env, home: envs.append(env) or sleeper())
    monkeypatch.setattr(runner, "check_workers", lambda config: None)
    long_tmp = tmp_path / ("x" * runner.MAX_RAY_TMPDIR_CHARS)
    long_tmp.mkdir()
    monkeypatch.setattr(runner, "SHORT_TMP", str(long_tmp))  # nowhere short either
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with runner.local_superlink(RunConfig(clients=2, rounds=1)) as link:
        assert link.ray_head is None and envs[0]["RAY_ADDRESS"] == "local" and "RAY_TMPDIR" not in envs[0]
    assert [p.name for p in long_tmp.iterdir()] == []  # the long Ray directory it tried was removed
    with runner.local_superlink(RunConfig(clients=2, rounds=1, ray_address="10.0.0.1:6379")) as link:
        assert link.ray_head is None and envs[1]["RAY_ADDRESS"] == "10.0.0.1:6379"


def test_the_ray_head_command_opens_only_free_ports_and_keeps_its_files_in_the_home(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    commands: list[list[str]] = []

    class Started:
        def __init__(self, cmd: list[str], **kwargs: object) -> None:
            commands.append(cmd)
            assert kwargs["start_new_session"] is True
            env = kwargs["env"]
            assert isinstance(env, dict) and "RAY_ADDRESS" not in env and env["RAY_prestart_worker_first_driver"] == "0"
            assert env["RAY_TMPDIR"] == str(tmp_path / "r")

    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")  # the caller's cluster is never the private head's
    monkeypatch.setattr(runner.subprocess, "Popen", Started)
    _, address = runner._launch_ray_head(tmp_path, tmp_path / "r")
    (cmd,) = commands
    assert cmd[1:4] == ["start", "--head", "--block"]
    option = {cmd[i]: cmd[i + 1] for i in range(4, len(cmd) - 1) if cmd[i].startswith("--")}
    assert address == f"127.0.0.1:{option['--port']}" and option["--temp-dir"] == str(tmp_path / "r" / "ray")
    ports = [option[k] for k in ("--port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                 "--runtime-env-agent-port", "--metrics-export-port", "--ray-client-server-port")]
    assert len(set(ports)) == len(ports) and "10001" not in ports and "6379" not in ports
    assert option["--include-dashboard"] == "false" and option["--node-ip-address"] == "127.0.0.1"
    assert "--no-monitor" in cmd  # no autoscaler daemon on a one-machine Ray of fixed size


def test_a_head_that_died_is_named_with_its_log(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    answer = runner._head_exited(dead)
    assert answer is not None and "code 3" in answer and runner.RAY_HEAD_LOG in answer
    home, run_dir = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    run_dir.mkdir()
    (home / runner.RAY_HEAD_LOG).write_text("ValueError: port in use")
    runner._keep_ray_head_log(dead, home, run_dir)
    assert (run_dir / runner.RAY_HEAD_LOG).read_text() == "ValueError: port in use"


def test_the_private_ray_hook_drops_only_flowers_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private.worker import _maybe_modify_runtime_env

    from fedmodel.simulations import ray_env

    monkeypatch.setenv("RAY_RUNTIME_ENV_HOOK", runner.PRIVATE_RAY_ENV["RAY_RUNTIME_ENV_HOOK"])

    def hook(runtime_env: dict[str, Any] | None) -> dict[str, Any] | None:
        return _maybe_modify_runtime_env(runtime_env, False)  # what ray.init does with the runtime env it is given

    assert hook({"env_vars": {"PYTHONPATH": "/a:/b"}}) == {}  # Flower's runtime env: plain workers
    assert hook({"env_vars": {"PYTHONPATH": "/a", "X": "1"}, "pip": ["y"]}) == {"env_vars": {"X": "1"}, "pip": ["y"]}
    assert hook({"pip": ["y"]}) == {"pip": ["y"]} and hook(None) is None and hook({}) == {}
    assert ray_env.HOOK == "fedmodel.simulations.ray_env.drop_pythonpath"


def test_only_a_private_ray_drops_flowers_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def launch(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                        start_new_session=True))
        return started[-1]

    monkeypatch.setattr(runner, "launch_superlink", launch)
    monkeypatch.setattr(runner, "check_workers", lambda config: None)
    monkeypatch.setattr(runner, "_launch_ray_head", lambda home, ray_root: (launch({}, home), "127.0.0.1:1"))
    try:
        with runner.local_superlink(RunConfig(clients=2, rounds=1)) as link:
            assert link.env["RAY_RUNTIME_ENV_HOOK"] == "fedmodel.simulations.ray_env.drop_pythonpath"
        with runner.local_superlink(RunConfig(clients=2, rounds=1, ray_address="10.0.0.1:6379")) as link:
            assert "RAY_RUNTIME_ENV_HOOK" not in link.env  # other machines' workers need the driver's PYTHONPATH
            assert link.env["RAY_ADDRESS"] == "10.0.0.1:6379"
    finally:
        for proc in started:
            proc.kill()


def test_an_interrupted_run_is_stopped_so_that_its_log_stream_ends_before_the_superlink_stops(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []

    class Stream:
        def __init__(self) -> None:
            self.stopped = False

        def ended(self) -> bool:
            return "stop_run" in calls  # the SuperLink ends a stopped run's stream

        def wait(self, timeout_s: float) -> None:
            deadline = time.monotonic() + timeout_s
            while not self.ended() and time.monotonic() < deadline:
                time.sleep(0.01)
            calls.append(f"waited, ended={self.ended()}")

        def stop(self) -> None:
            calls.append("log.stop")

    class Control:
        def submit(self, app_dir: Path, federation: dict[str, Any]) -> int:
            return 7

        def stream_log(self, run_id: int, path: Path) -> Stream:
            return Stream()

        def stop_run(self, run_id: int) -> bool:
            assert run_id == 7
            calls.append("stop_run")
            return True

    def interrupted(*args: object, **kwargs: object) -> tuple[str, str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "wait_until_up", lambda proc, env: None)
    monkeypatch.setattr(runner, "follow", interrupted)
    monkeypatch.setattr(runner, "stop_processes", lambda *stops: calls.append("stop_processes"))
    home = tmp_path / "home"
    home.mkdir()
    link = runner.LocalSuperLink(home, {"FLWR_HOME": str(home)}, sleeper(), time.time(), Control())  # type: ignore[arg-type]
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_simulation(RunConfig(clients=2, rounds=1, out=str(tmp_path / "run")), superlink=link)
    finally:
        link.proc.kill()
    assert calls == ["stop_run", "waited, ended=True", "log.stop", "stop_processes"]
