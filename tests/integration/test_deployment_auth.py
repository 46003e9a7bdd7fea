"""A real coordinator SuperLink (TLS + node authentication) and real ``fedmodel node start`` on loopback.

One SuperLink serves the whole module (about 4 s to start, up to 10 s to stop). Each node is the real CLI,
``python -m fedmodel.cli node start``, in its own process group; every process is stopped in a ``finally``.
About 70 s in all on 2 cores, most of it the CLI's and flwr's start-up.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmodel.deployment.coordinator import (
    NodeEntry,
    allow_node,
    flwr_env,
    list_nodes,
    revoke_node,
    superlink_command,
    write_connection,
)
from fedmodel.runs import free_port, stop_process
from fedmodel.security.certs import generate_node_keys, init_certs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

START_TIMEOUT_S = 30.0
REJECT_TIMEOUT_S = 60.0
ONLINE_TIMEOUT_S = 30.0
REVOKE_EXIT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Deployment:
    """The module's coordinator and the files its sites use."""

    root: Path
    state: Path
    address: str
    ca: Path
    other_ca: Path
    keys: Path
    data: Path


def _flower_processes(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()
            if marker in line and ("flower-" in line or "flwr" in line) and "<defunct>" not in line]


def _wait_healthy(port: int, ca: Path, proc: subprocess.Popen[bytes]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode} at start-up")
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=1, context=context) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f} s")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deploy")
    certs = init_certs(root / "certs", ["localhost", "127.0.0.1"])
    other = init_certs(root / "other-certs", ["localhost", "127.0.0.1"])
    data = root / "site.csv"
    data.write_text("x,y\n1.0,0\n2.0,1\n")
    state, port = root / "coordinator", free_port()
    state.mkdir()
    write_connection(state, f"127.0.0.1:{port}", certs.ca_cert)
    cmd = superlink_command(certs.ca_cert.parent, state, "127.0.0.1", port, insecure=False)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with (state / "superlink.log").open("wb") as log:
            proc = subprocess.Popen(cmd, cwd=state, env=flwr_env(state), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        _wait_healthy(port, certs.ca_cert, proc)
        yield Deployment(root, state, f"127.0.0.1:{port}", certs.ca_cert, other.ca_cert, root / "keys", data)
    finally:
        stop_process(proc)
    deadline = time.monotonic() + 30  # children notice their parent's end by polling: slow on a loaded machine
    while _flower_processes(str(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _flower_processes(str(root)) == []


def _node_cli(dep: Deployment, name: str, ca: Path) -> list[str]:
    generate_node_keys(dep.keys, name)
    return [sys.executable, "-m", "fedmodel.cli", "node", "start", "--coordinator", dep.address,
            "--ca", str(ca), "--key", str(dep.keys / f"{name}.key"), "--data", str(dep.data),
            "--state-dir", str(dep.root / f"node-{name}"), "--device", "cpu"]


def _run_to_exit(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run the node CLI until it exits on its own; return its exit code and stderr."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr
    finally:
        stop_process(proc)  # type: ignore[arg-type]  # text-mode Popen; only pid/poll/wait are used


def _wait_for_status(dep: Deployment, name: str, live: str, timeout: float) -> NodeEntry:
    deadline = time.monotonic() + timeout
    while True:
        entry = next(n for n in list_nodes(dep.state) if n.name == name)
        if entry.live_status == live or time.monotonic() > deadline:
            return entry
        time.sleep(1.0)


def test_a_node_that_was_not_admitted_is_refused(deployment: Deployment) -> None:
    code, stderr = _run_to_exit(_node_cli(deployment, "stranger", deployment.ca), REJECT_TIMEOUT_S)
    assert code != 0
    assert "this node's key is not admitted" in stderr
    assert "fedmodel coordinator allow-node" in stderr


def test_a_node_trusting_another_ca_is_refused(deployment: Deployment) -> None:
    code, stderr = _run_to_exit(_node_cli(deployment, "wrong-ca", deployment.other_ca), REJECT_TIMEOUT_S)
    assert code != 0
    assert f"the coordinator's certificate is not signed by {deployment.other_ca}" in stderr


def test_allowed_node_goes_online_and_revoke_disconnects_it(deployment: Deployment) -> None:
    cmd = _node_cli(deployment, "site-a", deployment.ca)
    entry = allow_node(deployment.state, deployment.keys / "site-a.pub")
    assert (entry.name, entry.status) == ("site-a", "allowed")
    log = deployment.root / "site-a.out"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        online = _wait_for_status(deployment, "site-a", "online", ONLINE_TIMEOUT_S)
        assert online.live_status == "online", log.read_text()
        assert proc.poll() is None

        revoked = revoke_node(deployment.state, "site-a")
        assert revoked.status == "revoked"
        assert proc.wait(timeout=REVOKE_EXIT_TIMEOUT_S) == 0, log.read_text()
    finally:
        stop_process(proc)
    after = next(n for n in list_nodes(deployment.state) if n.name == "site-a")
    assert (after.status, after.live_status) == ("revoked", "unregistered")
    assert _flower_processes(str(deployment.root / "node-site-a")) == []


def test_coordinator_start_without_certificates_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "coordinator"
    proc = subprocess.run(
        [sys.executable, "-m", "fedmodel.cli", "coordinator", "start", "--state-dir", str(state),
         "--address", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: no certificates given")
    assert "fedmodel certs init" in proc.stderr and "Traceback" not in proc.stderr
    assert not state.exists()
    assert _flower_processes(str(state)) == []
