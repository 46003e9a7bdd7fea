"""The ledger survives SIGKILL at random moments: what was committed stays, totals stay within budget.

A child process reserves and commits in a loop and appends a line to a log after each call returns
(one ``write(2)`` each, so a kill never leaves half a line); the test kills it with SIGKILL at a
seeded random moment, reopens the ledger and checks every logged entry is there. Children are
forked from a forkserver that imported the ledger and Opacus (and so torch) once, which keeps each of the
many processes cheap; each runs the ``CHILD`` script with ``exec``.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import time
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant

from fedmodel.privacy.ledger import KEY_BYTES, PrivacyLedger

CHILD = """
import os, random, time
from pathlib import Path
from fedmodel.errors import PrivacyBudgetExceeded
from fedmodel.privacy.ledger import PrivacyLedger

log = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def say(text):
    os.write(log, (text + "\\n").encode())

ledger = PrivacyLedger(Path(PATH), key=KEY)
rng = random.Random(SEED)
say("ready")
refused = set()
for i in range(10**9):
    owner = rng.choice(sorted(BUDGETS))
    try:
        reservation = ledger.reserve(owner, run_id=f"run-{SEED}-{i}", coordinator="coordinator",
                                     noise_multiplier=SIGMA, sample_rate=1.0, steps=rng.randint(1, 4),
                                     delta=1e-5, budget_epsilon=BUDGETS[owner])
    except PrivacyBudgetExceeded:
        if owner not in refused:
            refused.add(owner)
            say(f"refused {owner}")
        continue
    say(f"reserved {reservation.entry_id} {owner}")
    if TRAIN_FOREVER:
        time.sleep(3600)
    ledger.commit(reservation)
    say(f"committed {reservation.entry_id} {owner}")
"""
SIGMA = 8.0  # full-batch steps (sample rate 1): Opacus' RDP is exact and fast to recompute as an oracle
BUDGETS = {"tight": 2.0, "loose-a": 1000.0, "loose-b": 1000.0}
KILLS = 10


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["fedmodel.privacy.ledger", "opacus.accountants.analysis.rdp"])
    return ctx


def start(ctx: ForkServerContext, path: Path, log: Path, seed: int, key: bytes | None,
          *, train_forever: bool = False) -> multiprocessing.process.BaseProcess:
    env: dict[str, Any] = {"PATH": str(path), "LOG": str(log), "SEED": seed, "KEY": key, "SIGMA": SIGMA,
                           "BUDGETS": BUDGETS, "TRAIN_FOREVER": train_forever}
    child = ctx.Process(target=exec, args=(CHILD, env), daemon=True)
    child.start()
    return child


def lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(log: Path, word: str, child: multiprocessing.process.BaseProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(line[0] == word for line in lines(log)):
        assert child.is_alive(), f"the child died before saying {word!r} (exit code {child.exitcode})"
        assert time.monotonic() < deadline, f"the child did not say {word!r} in {timeout} s"
        time.sleep(0.005)


def kill(child: multiprocessing.process.BaseProcess) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def check(path: Path, key: bytes | None, logged: list[list[str]]) -> dict[str, float]:
    """Reopen after a kill: every logged entry is there, the totals are Opacus' and within budget."""
    with PrivacyLedger(path, key=key) as ledger:
        stored = {e.entry_id: e for owner in BUDGETS for e in ledger.entries(owner)}
        for word, *rest in logged:
            if word in ("reserved", "committed"):
                entry = stored[int(rest[0])]
                assert entry.owner == rest[1]
                if word == "committed":
                    assert entry.status == "committed"
        totals = {}
        for summary in ledger.summary():
            history = ledger.history(summary.owner)
            assert summary.reserved + summary.committed == len(history)
            assert summary.epsilon == pytest.approx(opacus_epsilon(history, 1e-5), rel=1e-9)
            assert summary.epsilon <= BUDGETS[summary.owner]
            totals[summary.owner] = summary.epsilon
    db = sqlite3.connect(path)
    try:
        owners = db.execute("SELECT count(*) FROM owners").fetchone()[0]
        assert db.execute("SELECT coalesce(sum(refs), 0) FROM curves").fetchone()[0] == owners
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    return totals


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_sigkill_at_random_moments_loses_nothing_committed(
    forkserver: ForkServerContext, tmp_path: Path, encrypted: bool
) -> None:
    rng = random.Random(20_260_601 + encrypted)
    key = os.urandom(KEY_BYTES) if encrypted else None
    path = tmp_path / "ledger.sqlite"
    totals: dict[str, float] = {}
    logged: list[list[str]] = []
    for i in range(KILLS):
        log = tmp_path / f"child-{i}.log"
        child = start(forkserver, path, log, seed=100 * encrypted + i, key=key)
        wait_for(log, "ready", child)
        time.sleep(rng.uniform(0.0, 0.25))
        kill(child)
        logged += lines(log)
        now = check(path, key, logged)
        assert all(now.get(owner, 0.0) >= spent for owner, spent in totals.items())  # never lowered
        totals = now
    assert sum(word == "committed" for word, *_ in logged) > KILLS  # the kills did land mid-loop
    assert ["refused", "tight"] in logged  # the tight owner ran out of budget and was refused


def test_sigkill_while_creating_the_ledger(forkserver: ForkServerContext, tmp_path: Path) -> None:
    rng = random.Random(7)
    for i in range(6):
        path, log = tmp_path / f"ledger-{i}.sqlite", tmp_path / f"child-{i}.log"
        child = start(forkserver, path, log, seed=i, key=None)
        time.sleep(rng.uniform(0.0, 0.02))
        kill(child)
        check(path, None, lines(log))


def test_crash_during_training_leaves_the_reservation_spent(forkserver: ForkServerContext, tmp_path: Path) -> None:
    path, log = tmp_path / "ledger.sqlite", tmp_path / "child.log"
    child = start(forkserver, path, log, seed=3, key=None, train_forever=True)
    wait_for(log, "reserved", child)
    kill(child)
    [_, entry_id, owner] = next(line for line in lines(log) if line[0] == "reserved")
    with PrivacyLedger(path) as ledger:
        [entry] = ledger.entries(owner)
        assert (entry.entry_id, entry.status) == (int(entry_id), "reserved")
        spent = ledger.spent(owner)
        assert spent > 0
        assert spent == pytest.approx(opacus_epsilon([(SIGMA, 1.0, entry.steps)], 1e-5), rel=1e-9)
        assert ledger.remaining(owner, BUDGETS[owner]) == pytest.approx(BUDGETS[owner] - spent)
