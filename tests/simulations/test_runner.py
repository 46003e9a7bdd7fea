"""The simulation runner's own SuperLink: started early, always stopped (no Flower process is started here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedmodel.config import RunConfig
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
