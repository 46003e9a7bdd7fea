"""A real coordinator crash in simulation: SIGKILL every process of `fedmodel simulate` after round 2 of 5.

`fedmodel simulate --resume` then finishes rounds 3 to 5 on Flower's engine. Compared with an
uninterrupted run of the same seed: final accuracy within 1 point, and every owner's epsilon equal,
or larger by exactly the one round that was in flight (never smaller). Every process the test
started (the CLI, the SuperLink, its SuperExec, flwr-simulation, Ray) is killed by id at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]  # three Flower runs: about 5 min on 2 busy cores
ARGS = ["--clients", "3", "--rounds", "5", "--seed", "7", "--batch-size", "64", "--format", "json"]


def simulate(*args: str, timeout: float = 500) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-m", "fedmodel.cli", "simulate", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(json.loads(proc.stdout))


def wait_for_event(progress: Path, proc: subprocess.Popen[bytes], kind: str, server_round: int,
                   timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "fedmodel simulate ended before the kill point"
        if progress.exists():
            for line in progress.read_text().splitlines():
                event = json.loads(line) if line.strip() else {}
                if event.get("event") == kind and event.get("round") == server_round:
                    return
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event for round {server_round} within {timeout} s")


def kill_tree(root: psutil.Process) -> list[psutil.Process]:
    """SIGKILL a process and everything below it at once (collected first, so nothing is re-parented unseen)."""
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


def flower_homes(procs: list[psutil.Process]) -> set[Path]:
    """The private Flower homes (temporary folders) of the killed runs, from the SuperLink's --log-file."""
    homes = set()
    for p in procs:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "--log-file" in cmd:
            homes.add(Path(cmd[cmd.index("--log-file") + 1]).parent)
    return homes


def left_running(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + " ".join(f"{k}={v}" for k, v in (p.info["environ"] or {}).items())
        except psutil.Error:
            continue
        if marker in text and p.pid != os.getpid():
            out.append(p)
    return out


def epsilon(owner: dict[str, float], steps: int) -> float:
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=owner["sample_rate"], noise_multiplier=owner["noise_multiplier"], steps=steps, orders=orders)
    return float(get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0])


def test_coordinator_killed_after_round_2_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    started = time.monotonic()
    reference = simulate(*ARGS, "--out", str(tmp_path / "uninterrupted"))
    reference_s = time.monotonic() - started

    run_dir = tmp_path / "crashed"
    procs: list[psutil.Process] = []
    cli = subprocess.Popen([sys.executable, "-m", "fedmodel.cli", "simulate", *ARGS, "--out", str(run_dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           env={**os.environ, "FEDMODEL_TEST_MARKER": str(tmp_path)})
    try:
        wait_for_event(run_dir / "progress.jsonl", cli, "checkpoint", 2)  # round 2 done, round 3 about to start
        root = psutil.Process(cli.pid)
        procs = kill_tree(root)
        assert root.wait(timeout=10) == -signal.SIGKILL  # psutil reaps it: its status is psutil's to tell
        assert not (run_dir / "report.json").exists()  # it died, nobody wrote the end

        resumed_started = time.monotonic()
        report = simulate("--resume", str(run_dir), "--format", "json")
        resumed_s = time.monotonic() - resumed_started
    finally:
        if cli.poll() is None:
            kill_tree(psutil.Process(cli.pid))
            cli.wait(timeout=10)
        for leftover in left_running(str(tmp_path)):
            kill_tree(leftover)
        for home in flower_homes(procs):
            shutil.rmtree(home, ignore_errors=True)
    print(f"uninterrupted run {reference_s:.0f} s, resume {resumed_s:.0f} s")

    assert report["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3, 4, 5]  # type: ignore[index]
    assert report["resumed"][0]["from_round"] == 2  # type: ignore[index]
    final, expected = report["final"]["accuracy"], reference["final"]["accuracy"]  # type: ignore[index]
    assert abs(final - expected) <= 0.01, (final, expected)

    ours = {o["owner"]: o for o in report["privacy"]["owners"]}  # type: ignore[index]
    theirs = {o["owner"]: o for o in reference["privacy"]["owners"]}  # type: ignore[index]
    print(f"final accuracy {final:.4f} (uninterrupted {expected:.4f}); epsilon per owner (resumed, uninterrupted): "
          f"{[(o, ours[o]['epsilon'], theirs[o]['epsilon']) for o in sorted(ours)]}")
    assert set(ours) == set(theirs) == {0, 1, 2}
    for owner, mine in ours.items():
        ref = theirs[owner]
        per_round = ref["steps"] // 5
        assert mine["steps"] in (ref["steps"], ref["steps"] + per_round), (owner, mine["steps"], ref["steps"])
        assert mine["epsilon"] == pytest.approx(epsilon(mine, mine["steps"]), rel=1e-9)
        assert mine["epsilon"] >= ref["epsilon"] - 1e-12  # never smaller
        if mine["steps"] == ref["steps"]:
            assert mine["epsilon"] == pytest.approx(ref["epsilon"], rel=1e-12)
    assert left_running(str(tmp_path)) == []
