"""benchmarks/startup.py sorts a simulation's processes into groups by their command line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "benchmarks")]

import startup  # noqa: E402


@pytest.mark.parametrize(("cmd", "expected"), [
    ("/v/bin/python3.11 /v/bin/ray start --head --block --port 1", "Ray head (ray start --block)"),
    ("ray::DashboardAgent", "Ray daemons"),
    ("ray::RuntimeEnvAgent", "Ray daemons"),
    ("/v/bin/python3.11 -m ray.util.client.server --address=127.0.0.1:1", "Ray daemons"),
    ("/v/site-packages/ray/core/src/ray/raylet/raylet --x", "Ray daemons"),
    ("ray::ClientAppActor.run", "Ray workers (ClientApp actors)"),
    ("ray::IDLE", "Ray workers (ClientApp actors)"),
    ("/v/bin/python3.11 /v/bin/flwr-simulation --runtime-api-address x", "flwr-simulation (ServerApp, Ray driver)"),
    ("/v/bin/python3.11 /v/bin/flwr log 12 local --stream", "flwr log"),
])
def test_each_process_of_a_simulation_lands_in_its_group(cmd: str, expected: str) -> None:
    assert startup.group(cmd, root=False) == expected
