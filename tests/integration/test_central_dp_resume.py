"""Central DP across a coordinator crash: SIGKILL `fedmodel simulate --central-dp fixed` after round 1 of 3,
then `--resume`. The client-level record keeps round 1's release and charges round 2 (in flight) twice.
Every process the test started is killed by id at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dp_accounting
import psutil
import pytest
from dp_accounting.rdp import RdpAccountant

# two Flower runs: about 5 min, longer on busy cores
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
ARGS = ["--clients", "3", "--rounds", "3", "--central-dp", "fixed", "--central-noise", "1.0", "--central-clip", "0.5"]


def wait_for_checkpoint(progress: Path, proc: subprocess.Popen[bytes], server_round: int, timeout: float = 500) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "fedmodel simulate ended before the kill point"
        if progress.exists():
            for line in progress.read_text().splitlines():
                event = json.loads(line) if line.strip() else {}
                if event.get("event") == "checkpoint" and event.get("round") == server_round:
                    return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of round {server_round} within {timeout} s")


def kill_tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs[1:], timeout=10)
    return procs


def started_by(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["environ"]):
        try:
            if any(marker in f"{k}={v}" for k, v in (p.info["environ"] or {}).items()) and p.pid != os.getpid():
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_resumed_run_keeps_its_releases_and_charges_the_round_in_flight(tmp_path: Path) -> None:
    run_dir = tmp_path / "crashed"
    env = {**os.environ, "FEDMODEL_TEST_MARKER": str(tmp_path)}
    cli = subprocess.Popen([sys.executable, "-m", "fedmodel.cli", "simulate", *ARGS, "--out", str(run_dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    procs: list[psutil.Process] = []
    try:
        wait_for_checkpoint(run_dir / "progress.jsonl", cli, 1)
        procs = kill_tree(psutil.Process(cli.pid))
        resumed = subprocess.run([sys.executable, "-m", "fedmodel.cli", "simulate", "--resume", str(run_dir),
                                  "--format", "json"], capture_output=True, text=True, timeout=900, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        if cli.poll() is None:
            kill_tree(psutil.Process(cli.pid))
            cli.wait(timeout=10)
        for leftover in started_by(str(tmp_path)):
            kill_tree(leftover)
        for p in procs:
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if "--log-file" in cmd:
                shutil.rmtree(Path(cmd[cmd.index("--log-file") + 1]).parent, ignore_errors=True)

    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "completed" and report["resumed"][0]["from_round"] == 1
    level = report["privacy"]["client_level"]
    assert [r["round"] for r in level["releases"]] == [1, 2, 3]
    assert [c["round"] for c in level["charged_on_resume"]] == [2]
    oracle = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    oracle.compose(dp_accounting.GaussianDpEvent(1.0), 4)  # 3 releases and the in-flight round once more
    assert level["releases_charged"] == 4
    assert oracle.get_epsilon(1e-5) * (1 - 1e-12) <= level["epsilon"] <= oracle.get_epsilon(1e-5) * 1.01
