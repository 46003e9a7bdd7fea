"""The simulation runner's own SuperLink: started early, always stopped (no Flower process is started here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmodel.config import RunConfig
from fedmodel.report.run_folder import RunFolder
from simulations import runner


def test_local_superlink_stops_its_process_and_removes_its_home_when_the_caller_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def launch(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
        assert env["FLWR_HOME"] == str(home) and (home / "config.toml").exists()
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                        start_new_session=True))
        return started[0]

    monkeypatch.setattr(runner, "_launch_superlink", launch)
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
