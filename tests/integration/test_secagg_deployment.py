"""Secure aggregation in a real deployment on loopback: TLS, admitted nodes whose policy requires SecAgg+.

Through the documented commands: three sites started with ``--require-secure-aggregation`` train a
``fedmodel train --secure-aggregation`` run, then refuse a plain run, naming the rule. Every process
started here is stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.runs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SITES = ("site-0", "site-1", "site-2")


def fedmodel(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedmodel.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "fedmodel.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind in the group
    except ProcessLookupError:
        pass


def wait_for_superlink(address: str, ca: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the coordinator exited at start-up"
        try:
            with urllib.request.urlopen(f"https://{address}/health", context=context, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the coordinator did not answer on {address}")


def left_running(tmp_path: Path, wait_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + wait_s
    while True:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        alive = [line for line in ps.splitlines() if str(tmp_path) in line and "<defunct>" not in line]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1)


def test_sites_requiring_secagg_train_a_secure_run_and_refuse_a_plain_one(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    address = f"127.0.0.1:{free_port()}"
    certs, state, keys = tmp_path / "certs", tmp_path / "coordinator", tmp_path / "keys"
    split = federated_split(RunConfig(dataset="breast-cancer", clients=3))
    common = ["--coordinator", address, "--ca", str(certs / "ca.crt"), "--dataset", "breast-cancer",
              "--clients", "3", "--rounds", "1", "--epsilon", "3", "--format", "json"]
    try:
        assert fedmodel("certs", "init", "--out", str(certs), "--host", "127.0.0.1").returncode == 0
        coordinator = start(["coordinator", "start", "--certs", str(certs), "--state-dir", str(state),
                             "--address", address], tmp_path / "coordinator.log")
        procs.append(coordinator)
        wait_for_superlink(address, certs / "ca.crt", coordinator)
        for i, site in enumerate(SITES):
            shard = split.owner(i)
            data = tmp_path / f"{site}.csv"
            header = ",".join([f"f{j}" for j in range(shard.x.shape[1])] + ["diagnosis"])
            rows = [",".join([f"{v:.6f}" for v in r] + [str(int(y))]) for r, y in zip(shard.x, shard.y, strict=True)]
            data.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
            assert fedmodel("node", "keygen", "--out", str(keys), "--name", site).returncode == 0
            allowed = fedmodel("coordinator", "allow-node", str(keys / f"{site}.pub"), "--state-dir", str(state),
                               "--name", site)
            assert allowed.returncode == 0, allowed.stdout + allowed.stderr
            procs.append(start(["node", "start", "--coordinator", address, "--ca", str(certs / "ca.crt"),
                                "--key", str(keys / f"{site}.key"), "--data", str(data), "--label", "diagnosis",
                                "--name", site, "--budget-epsilon", "3", "--device", "cpu",
                                "--state-dir", str(tmp_path / "nodes" / site), "--require-secure-aggregation"],
                               tmp_path / f"{site}.log"))
        started = time.monotonic()
        secure = fedmodel("train", *common, "--secure-aggregation", "--out", str(tmp_path / "secure"), timeout=900)
        print(f"fedmodel train --secure-aggregation (1 round) took {time.monotonic() - started:.1f} s")
        plain = fedmodel("train", *common, "--out", str(tmp_path / "plain"), timeout=600)
    finally:
        for proc in reversed(procs):
            stop(proc)
    assert left_running(tmp_path) == []

    assert secure.returncode == 0, secure.stdout[-3000:] + secure.stderr[-3000:]
    report = json.loads(secure.stdout)
    assert report["status"] == "completed"
    assert [(r["num_replies"], r["num_failures"]) for r in report["rounds"]] == [(3, 0)]
    assert {o["owner"] for o in report["privacy"]["owners"]} == set(SITES)
    assert "node registry" in report["identity"]["source"] and report["identity"]["claims"] == []  # named by key
    assert all(0 < o["epsilon"] <= 3 for o in report["privacy"]["owners"])
    events = [json.loads(line) for line in (tmp_path / "secure" / "progress.jsonl").read_text().splitlines()]
    assert [e["completed"] for e in events if e["event"] == "secure-aggregation"] == [True]

    assert plain.returncode != 0  # every owner refused: nothing to aggregate
    failed = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert failed["status"] == "failed"
    assert sorted((r["owner"], r["rule"]) for r in failed["privacy"]["refusals"]) == [
        (site, "require-secure-aggregation") for site in SITES]
