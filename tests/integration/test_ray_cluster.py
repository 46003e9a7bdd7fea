"""fedmodel simulations and real Ray clusters on loopback: a private Ray by default, a cluster on request.

Every Ray process of these tests lives under its own temp dir (``RAY_TMPDIR``), is bound to
127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) and is stopped by the test, never with
``ray stop`` (which would stop every Ray cluster of the user on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedmodel.simulations.cluster import RayClusterError, check_cluster
from fedmodel.simulations.runner import run_simulation

from fedmodel.config import RunConfig
from fedmodel.runs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # real Ray clusters and simulations: 2-3 min each

RAY_SERVICES = ("raylet", "gcs_server")


@pytest.fixture(scope="module")
def ray_tmp() -> Iterator[Path]:
    """A short temp dir (Ray's socket paths) holding every Ray file of this module; the env points at it."""
    root = Path(tempfile.mkdtemp(prefix="fmray-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(root))
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # node IP 127.0.0.1, services bound to loopback
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield root
    shutil.rmtree(root, ignore_errors=True)


def processes_under(root: Path) -> list[tuple[int, str]]:
    """Our processes: every one whose command line names ``root``."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    found = []
    for line in ps.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(root) in args and int(pid) != os.getpid() and "<defunct>" not in args:
            found.append((int(pid), args))
    return found


def drivers(logs: Path) -> list[str]:
    """One ``python-core-driver-*`` log per Ray driver (job) that ever connected to the node."""
    return sorted(p.name for p in logs.glob("python-core-driver-*"))


def test_default_simulation_never_joins_a_cluster_registered_on_the_machine(ray_tmp: Path, tmp_path: Path) -> None:
    """``ray start --head`` registers its address where Ray's ``ray.init()`` looks; fedmodel must not go there."""
    root = ray_tmp / "stray"
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "1",
           "--temp-dir", str(root / "ray"), "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--include-dashboard", "false", "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env={**os.environ, "RAY_TMPDIR": str(root)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        registered = root / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 90
        while not registered.exists():
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        assert registered.read_text().strip() == f"127.0.0.1:{port}"
        [head_node] = check_cluster(f"127.0.0.1:{port}", 1, 0.0)
        logs = root / "ray" / "session_latest" / "logs"
        before = drivers(logs)

        # the user's environment is the one in which a bare ray.init() would join the head (facts: B3)
        os.environ["RAY_TMPDIR"] = str(root)
        try:
            report = run_simulation(RunConfig(clients=2, rounds=1, dp=False, out=str(tmp_path / "run"))).report
        finally:
            os.environ["RAY_TMPDIR"] = str(ray_tmp)

        nodes = {o["ray_node"] for o in report["owners"]}
        assert len(nodes) == 1 and None not in nodes, report["owners"]  # trained in Ray ...
        assert head_node.id not in nodes  # ... but not on the registered cluster
        assert report["resources"]["ray_address"] is None
        assert drivers(logs) == before  # no fedmodel driver (job) ever connected to the head
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=30)
        for pid, _ in processes_under(root):
            os.kill(pid, signal.SIGKILL)
    assert processes_under(root) == []


@pytest.fixture(scope="module")
def cluster(ray_tmp: Path) -> Iterator[str]:
    """A two-node Ray cluster on this machine: head and worker, 1 CPU each, on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    nodes = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=nodes)
    try:
        cluster.add_node(**{k: v for k, v in nodes.items() if k != "include_dashboard"})
        cluster.wait_for_nodes()
        yield str(cluster.address)
    finally:
        cluster.shutdown()
    time.sleep(1)
    left = [args for _, args in processes_under(ray_tmp) if any(s in args for s in RAY_SERVICES)]
    assert left == [], left


def test_owners_train_on_every_node_of_the_cluster(cluster: str, ray_tmp: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fedmodel.cli", "simulate", "--ray-address", cluster, "--clients", "4",
           "--rounds", "2", "--no-dp", "--out", str(out), "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    nodes = {n.id for n in check_cluster(cluster, 1, 0.0)}
    assert len(nodes) == 2
    assert report["resources"] == {"ray_address": cluster, "cpus_per_worker": 1, "gpus_per_worker": 0.0,
                                   "ray_nodes": sorted(nodes)}  # owners trained on both nodes
    assert {o["ray_node"] for o in report["owners"]} <= nodes
    assert len(report["owners"]) == 4
    assert [r["num_replies"] for r in report["rounds"]] == [4, 4]


def test_cluster_without_gpus_or_with_another_fedmodel_fails_in_time(cluster: str) -> None:
    start = time.monotonic()
    with pytest.raises(RayClusterError, match=r"no node has the 1 CPU and 0.25 GPU .*127\.0\.0\.1 \(\w+\): 1 CPU, 0 GPU"):
        check_cluster(cluster, 1, 0.25)
    with pytest.raises(RayClusterError, match=r"another fedmodel version than this machine \(9\.9\.9\).*"
                                              r"runs fedmodel \d"):
        check_cluster(cluster, 1, 0.0, expected_version="9.9.9")
    assert time.monotonic() - start < 60  # two checks, each bounded by 30 s
