"""A real deployment on loopback: coordinator, admitted nodes over TLS, one broken shard, one node whose
privacy policy refuses the run, `fedmodel train`; the nodes' ledgers and every audit log afterwards.

Everything runs through the documented commands as a user types them (`fedmodel certs init`,
`coordinator start`, `coordinator allow-node`, `node keygen`, `node start`, `train`), on
127.0.0.1 only, and every process started is stopped at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from safetensors.torch import load_file

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.privacy.release import DEFAULT_EVALUATION_NOISE
from fedmodel.runs import free_port
from fedmodel.security.audit_log import anchor_path, default_key_path, load_key, verify

pytestmark = pytest.mark.integration
GOOD_SITES = ("site-0", "site-1")
STRICT_SITE = "site-2"  # a good shard, but its owner's policy asks for more noise than the run's plan has
BAD_SITE = "site-bad"
STRICT_POLICY = ["--min-noise-multiplier", "5"]
NODE_BUDGET = 2.0


def fedmodel(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedmodel.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "fedmodel.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process group at once (each exits in its own time), then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children left behind in the group
        except ProcessLookupError:
            pass


def write_shards(folder: Path) -> dict[str, Path]:
    """Breast-cancer training rows of three owners as CSV files, and one shard with a column missing."""
    split = federated_split(RunConfig(dataset="breast-cancer", clients=3))
    paths: dict[str, Path] = {}
    for i, site in enumerate((*GOOD_SITES, STRICT_SITE)):
        shard = split.owner(i)
        paths[site] = folder / f"{site}.csv"
        write_csv(paths[site], shard.x, shard.y)
    bad = split.owner(0)
    paths[BAD_SITE] = folder / f"{BAD_SITE}.csv"
    write_csv(paths[BAD_SITE], bad.x[:, :-1], bad.y)
    return paths


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"f{j}" for j in range(x.shape[1])] + ["diagnosis"])
    rows = [",".join([f"{v:.6f}" for v in row] + [str(int(label))]) for row, label in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


def wait_for_superlink(address: str, ca: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
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


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[dict[str, object]]:
    procs: list[subprocess.Popen[bytes]] = []
    address = f"127.0.0.1:{free_port()}"
    certs, state, keys = tmp_path / "certs", tmp_path / "coordinator", tmp_path / "keys"
    try:
        shards = write_shards(tmp_path)
        with ThreadPoolExecutor() as pool:  # independent commands at once: each pays the CLI's start-up
            made = list(pool.map(lambda args: fedmodel(*args), [
                ("certs", "init", "--out", str(certs), "--host", "localhost", "--host", "127.0.0.1"),
                *[("node", "keygen", "--out", str(keys), "--name", site) for site in shards]]))
        assert [m.returncode for m in made] == [0] * len(made), [m.stderr for m in made]
        coordinator = start(["coordinator", "start", "--certs", str(certs), "--state-dir", str(state),
                             "--address", address], tmp_path / "coordinator.log")
        procs.append(coordinator)
        wait_for_superlink(address, certs / "ca.crt", coordinator)
        for site, data in shards.items():
            allowed = fedmodel("coordinator", "allow-node", str(keys / f"{site}.pub"), "--state-dir", str(state),
                               "--name", site)
            assert allowed.returncode == 0, allowed.stdout + allowed.stderr
            procs.append(start(["node", "start", "--coordinator", address, "--ca", str(certs / "ca.crt"),
                                "--key", str(keys / f"{site}.key"), "--data", str(data), "--label", "diagnosis",
                                "--name", site, "--budget-epsilon", str(NODE_BUDGET), "--device", "cpu",
                                "--state-dir", str(tmp_path / "nodes" / site),
                                *(STRICT_POLICY if site == STRICT_SITE else [])], tmp_path / f"{site}.log"))
        yield {"address": address, "ca": certs / "ca.crt", "tmp": tmp_path, "shards": shards}
    finally:
        stop(procs[1:])  # the nodes together, then their coordinator
        stop(procs[:1])
    assert left_running(tmp_path) == []  # every process of this federation is gone


def left_running(tmp_path: Path, wait_s: float = 15.0) -> list[str]:
    """Live processes whose command line mentions this test's folder (Flower's watchers need a moment)."""
    deadline = time.monotonic() + wait_s
    while True:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        alive = [line for line in ps.splitlines() if str(tmp_path) in line and "<defunct>" not in line]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1)


def test_sites_train_with_dp_while_a_broken_shard_and_a_strict_policy_fail_alone(
        federation: dict[str, object]) -> None:
    tmp = federation["tmp"]
    assert isinstance(tmp, Path)
    out = tmp / "run"
    started = time.monotonic()
    run = fedmodel("train", "--coordinator", str(federation["address"]), "--ca", str(federation["ca"]),
                   "--dataset", "breast-cancer", "--clients", "4", "--rounds", "2", "--epsilon", "3",
                   "--out", str(out), "--format", "json", timeout=500)
    print(f"fedmodel train took {time.monotonic() - started:.1f} s")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["status"] == "completed"
    assert (out / "model.safetensors").is_file() and (out / "report.html").is_file()
    assert load_file(str(out / "model.safetensors"))["0.weight"].shape == (2, 30)

    bad_file = federation["shards"][BAD_SITE]  # type: ignore[index]
    for row in report["rounds"]:
        assert (row["num_replies"], row["num_failures"]) == (2, 2)
        failures = {f["owner"]: f["reason"] for f in row["failures"]}
        assert set(failures) == {BAD_SITE, STRICT_SITE}
        assert f"{bad_file}: 29 feature columns" in failures[BAD_SITE]
        assert "the run schema expects 30" in failures[BAD_SITE]
        assert failures[STRICT_SITE].startswith(
            f"owner {STRICT_SITE}: refused by the owner's privacy policy (min-noise-multiplier): ")
    refusals = report["privacy"]["refusals"]
    assert [(r["round"], r["owner"], r["rule"]) for r in refusals] == [(1, STRICT_SITE, "min-noise-multiplier"),
                                                                       (2, STRICT_SITE, "min-noise-multiplier")]

    owners = {o["owner"]: o for o in report["privacy"]["owners"]}
    assert set(owners) == set(GOOD_SITES)
    orders = RDPAccountant.DEFAULT_ALPHAS
    for o in owners.values():
        assert o["budget_epsilon"] == NODE_BUDGET  # the node's budget, below the run's 3
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"], orders=orders)
        # and the DP evaluation of round 1 (a Gaussian release, noise multiplier 10, charged before round 2 trained)
        rdp = rdp + compute_rdp(q=1.0, noise_multiplier=DEFAULT_EVALUATION_NOISE, steps=1, orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
        assert o["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert 0 < o["epsilon"] <= NODE_BUDGET
        assert o["epsilon_total"] == pytest.approx(o["epsilon"], rel=1e-9)  # each node's first run
    assert 0.6 <= report["final"]["accuracy"] <= 1.0
    check_ledgers_and_audit_logs(tmp, out, owners, federation["shards"])  # type: ignore[arg-type]


def check_ledgers_and_audit_logs(tmp: Path, out: Path, owners: dict[str, dict[str, float]],
                                 shards: dict[str, Path]) -> None:
    """Every node's ledger holds what its owner spent; every audit log verifies and says who ran what."""
    for log in [out / "audit.log", tmp / "nodes" / GOOD_SITES[0] / "audit.log"]:  # as the user checks them
        verified = fedmodel("audit-log", "verify", str(log), "--require-head")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    for site in (*GOOD_SITES[1:], STRICT_SITE):
        assert verify(tmp / "nodes" / site / "audit.log", require_head=True).ok
        key_file = default_key_path(tmp / "nodes" / site)  # node start keyed the log, anchored beside the key
        assert verify(tmp / "nodes" / site / "audit.log", key=load_key(key_file), require_head=True,
                      anchor=anchor_path(key_file)).ok
    coordinator = [json.loads(line)["event"] for line in (out / "audit.log").read_text().splitlines()]
    assert coordinator[0] == "run-start" and coordinator[-1] == "run-end"
    assert coordinator.count("train-replies") == 2
    assert coordinator.count("node-audit-heads") >= 2  # each node's log head, kept out of the node's reach
    for site in GOOD_SITES:
        shown = fedmodel("ledger", "show", "--state-dir", str(tmp / "nodes" / site), "--format", "json")
        assert shown.returncode == 0, shown.stderr
        (total,) = json.loads(shown.stdout)["owners"]
        # two DP-SGD rounds and two DP evaluations (the one after round 2 came after the last train reply)
        assert (total["owner"], total["committed"], total["reserved"]) == (site, 4, 0)
        o = owners[site]
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"],
                          orders=RDPAccountant.DEFAULT_ALPHAS)
        rdp = rdp + compute_rdp(q=1.0, noise_multiplier=DEFAULT_EVALUATION_NOISE, steps=2,
                                orders=RDPAccountant.DEFAULT_ALPHAS)
        expected, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=1e-5)
        assert total["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert total["epsilon"] > owners[site]["epsilon_total"]  # the report's is the last train reply's
        entries = [json.loads(line) for line in (tmp / "nodes" / site / "audit.log").read_text().splitlines()]
        start = entries[0]["fields"]
        assert entries[0]["event"] == "run-start" and start["owner"] == site
        assert start["data"]["sha256"] == hashlib.sha256(shards[site].read_bytes()).hexdigest()
        commits = [e["fields"].get("what") for e in entries if e["event"] == "commit"]
        assert len(commits) == 4, commits  # each round's DP-SGD steps and each DP evaluation
    strict = [json.loads(line) for line in (tmp / "nodes" / STRICT_SITE / "audit.log").read_text().splitlines()]
    assert [e["fields"]["rule"] for e in strict if e["event"] == "refuse"] == ["min-noise-multiplier"] * 2
    reserved = [e["fields"].get("what", "") for e in strict if e["event"] == "reserve"]
    assert not [what for what in reserved if what.startswith("dp-sgd")], reserved  # no training: only evaluations


# ---------------------------------------------------------------- language models: two sites fine-tune a tiny BERT

TEXT_SITES = ("text-0", "text-1")


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": "fresh" if i % 2 else "rotten"}) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    return path


@pytest.mark.slow  # about 90 s; the tabular deployment above runs by default, tests/clients/test_text.py the site
def test_two_sites_fine_tune_a_language_model_over_tls(
    tmp_path: Path, bert_dir: Path, random_texts: Callable[..., list[str]]
) -> None:
    """Each site has its own texts (JSON Lines) and its own copy of the model; only the adapter travels."""
    from fedmodel.llm import fingerprint, read_adapter

    procs: list[subprocess.Popen[bytes]] = []
    address = f"127.0.0.1:{free_port()}"
    certs, state, keys = tmp_path / "certs", tmp_path / "coordinator", tmp_path / "keys"
    try:
        assert fedmodel("certs", "init", "--out", str(certs), "--host", "127.0.0.1").returncode == 0
        coordinator = start(["coordinator", "start", "--certs", str(certs), "--state-dir", str(state),
                             "--address", address], tmp_path / "coordinator.log")
        procs.append(coordinator)
        wait_for_superlink(address, certs / "ca.crt", coordinator)
        for i, site in enumerate(TEXT_SITES):
            assert fedmodel("node", "keygen", "--out", str(keys), "--name", site).returncode == 0
            allowed = fedmodel("coordinator", "allow-node", str(keys / f"{site}.pub"), "--state-dir", str(state),
                               "--name", site)
            assert allowed.returncode == 0, allowed.stdout + allowed.stderr
            data = write_jsonl(tmp_path / f"{site}.jsonl", random_texts(24, seed=40 + i))
            procs.append(start(["node", "start", "--coordinator", address, "--ca", str(certs / "ca.crt"),
                                "--key", str(keys / f"{site}.key"), "--data", str(data), "--label", "label",
                                "--model-path", str(bert_dir), "--name", site, "--budget-epsilon", str(NODE_BUDGET),
                                "--device", "cpu", "--state-dir", str(tmp_path / "nodes" / site)],
                               tmp_path / f"{site}.log"))
        held_out = write_jsonl(tmp_path / "held-out.jsonl", random_texts(20, seed=49))
        out = tmp_path / "run"
        started = time.monotonic()
        run = fedmodel("train", "--coordinator", address, "--ca", str(certs / "ca.crt"), "--task", "classification",
                       "--model-path", str(bert_dir), "--dataset", str(held_out), "--label", "label",
                       "--test-fraction", "0.5", "--clients", "2", "--rounds", "1", "--epsilon", "3",
                       "--max-length", "16", "--batch-size", "8", "--out", str(out), "--format", "json", timeout=400)
        print(f"fedmodel train (language model) took {time.monotonic() - started:.1f} s")
    finally:
        stop(procs[1:])  # the nodes together, then their coordinator
        stop(procs[:1])
    assert left_running(tmp_path) == []  # every process started here is gone
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["status"] == "completed" and report["rounds"][0]["num_replies"] == 2
    assert read_adapter(out / "adapter.safetensors").base_fingerprint == fingerprint(bert_dir)
    assert {r["owner"] for r in report["payload"]["owners"]} == set(TEXT_SITES)
    orders = RDPAccountant.DEFAULT_ALPHAS
    for o in report["privacy"]["owners"]:
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"], orders=orders)
        assert o["epsilon"] == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)[0], rel=1e-9)
        assert 0 < o["epsilon"] <= NODE_BUDGET  # the node's own budget, below the run's 3
