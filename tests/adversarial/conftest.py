"""The red-team harness: a real loopback deployment, and a hostile coordinator that submits its own Flower Apps.

Built once per session (about 40 s on 2 cores): ``fedmodel certs init``, ``coordinator start`` (TLS + node
authentication), ``node keygen`` and ``coordinator allow-node`` for five sites, and ``fedmodel node start`` for
``site-a`` .. ``site-d``, each with its own breast-cancer CSV shard and state folder, each a real process in its
own process group. ``site-e`` is admitted but not started: tests start a node with its key when they need one more
(a node that lies about its name, a node with another option). Every process is stopped at the end and the
harness checks that none is left.

:meth:`Federation.run_hostile` submits a hostile App (``apps/<name>/``) with ``flwr run APP <connection>
--format json -c ...`` as fedmodel itself does (:func:`fedmodel.runs.submit`), waits for Flower to report the
run finished and returns what the hostile ServerApp (``apps/hostile_server.py``) wrote. The plan (which messages
to which node) travels in a file in the run's ``out`` folder: the run config holds only fedmodel's own keys, so a
node parses it as it parses any fedmodel run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.deployment.coordinator import list_nodes, read_nodes
from fedmodel.runs import flower_env, free_port, run_status, submit

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
SITES = ("site-a", "site-b", "site-c", "site-d")
SPARE = "site-e"  # admitted, not started: its key serves the extra nodes some tests start
LABEL = "diagnosis"
LABELS = ("benign", "malignant")  # words, not 0/1: a reply that quotes a label value is easy to catch
NODE_BUDGET = 100.0  # large: every attack below spends at most RUN_EPSILON per run at a node
RUN_EPSILON = 1.0
FEATURES = 30
CONNECTION = "adversarial"
RUN_TIMEOUT_S = 420.0
ONLINE_TIMEOUT_S = 90.0


def fedmodel(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The fedmodel CLI as a user types it."""
    return subprocess.run([sys.executable, "-m", "fedmodel.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"}, stdin=subprocess.DEVNULL)


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A fedmodel CLI command in its own process group (so stopping it stops everything it started)."""
    with log.open("ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "fedmodel.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process group at once, then SIGKILL what is left (the groups' stragglers too)."""
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
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def left_running(root: Path, wait_s: float = 20.0) -> list[str]:
    """Live processes whose command line mentions ``root`` (Flower's watchers need a moment to notice)."""
    deadline = time.monotonic() + wait_s
    while True:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        alive = [line for line in ps.splitlines() if str(root) in line and "<defunct>" not in line]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(1)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """A shard as its owner keeps it: 30 feature columns and a word label."""
    header = ",".join([f"f{j}" for j in range(x.shape[1])] + [LABEL])
    rows = [",".join([f"{v:.6f}" for v in row] + [LABELS[int(label)]]) for row, label in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A shard's features (float32, as the node reads them) and labels (class indices in LABELS order)."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    cells = [line.split(",") for line in lines if line]
    x = np.array([[float(v) for v in row[:-1]] for row in cells], dtype=np.float32)
    y = np.array([LABELS.index(row[-1]) for row in cells], dtype=np.int64)
    return x, y


# ---------------------------------------------------------------------------------------------- messages
def logreg(weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> dict[str, list[Any]]:
    """fedmodel's ``logreg`` global model for 30 features and 2 classes (state-dict names ``0.weight``, ``0.bias``)."""
    w = np.zeros((2, FEATURES), np.float32) if weight is None else np.asarray(weight, np.float32)
    b = np.zeros(2, np.float32) if bias is None else np.asarray(bias, np.float32)
    return {"0.weight": w.tolist(), "0.bias": b.tolist()}


def message_config(server_round: int = 1, labels: tuple[str, ...] = LABELS, **extra: Any) -> dict[str, Any]:
    """The ConfigRecord fedmodel's ServerApp sends: ``lr``, the schema (``Schema.to_config``) and ``server-round``."""
    return {"lr": 2.0, "schema-features": FEATURES, "schema-labels": "\x1f".join(labels),
            "server-round": server_round, **extra}


def message(id_: str, node: int, kind: str, *, arrays: dict[str, Any] | None = None,
            config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One message of a plan phase: ``kind`` is train, evaluate or query."""
    return {"id": id_, "node": node, "type": kind, "arrays": arrays or logreg(), "config": config or message_config()}


@dataclass(frozen=True)
class HostileResult:
    """What a hostile run gave back: Flower's final status and every reply the hostile ServerApp received."""

    run_id: str  # fedmodel's run id (the ``run-id`` run-config key): nodes file their ledger and audit entries under it
    flower_run_id: int
    status: str
    details: str
    replies: dict[str, dict[str, Any]]
    secagg: dict[str, dict[str, Any]]
    out: Path

    def reply(self, id_: str) -> dict[str, Any]:
        assert id_ in self.replies, f"no reply {id_!r} recorded (replies: {sorted(self.replies)})"
        return self.replies[id_]


@dataclass
class Federation:
    """The loopback deployment: coordinator, admitted sites, running nodes, and what a test needs to attack them."""

    root: Path
    address: str
    ca: Path
    coordinator_state: Path
    keys: Path
    shards: dict[str, Path]
    heldout: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ nodes
    def state_dir(self, label: str) -> Path:
        return self.root / "nodes" / label

    def node_args(self, label: str, *, key: str | None = None, name: str | None = None,
                  extra: tuple[str, ...] = ()) -> list[str]:
        """``fedmodel node start`` of a node: ``key`` the admitted key it uses, ``name`` the name it declares."""
        key = key or label
        return ["node", "start", "--coordinator", self.address, "--ca", str(self.ca),
                "--key", str(self.keys / f"{key}.key"), "--data", str(self.shards[key]), "--label", LABEL,
                "--name", name or label, "--budget-epsilon", str(NODE_BUDGET), "--device", "cpu",
                "--state-dir", str(self.state_dir(label)), *extra]

    def start_node(self, label: str, *, key: str | None = None, name: str | None = None,
                   extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """Start a node (a real process group), kept under ``label`` and stopped at the end of the session."""
        assert label not in self.procs or self.procs[label].poll() is not None, f"{label} is running"
        self.state_dir(label).parent.mkdir(parents=True, exist_ok=True)
        proc = start(self.node_args(label, key=key, name=name, extra=extra), self.root / f"{label}.log")
        self.procs[label] = proc
        return proc

    def stop_node(self, label: str) -> None:
        stop([self.procs[label]])

    def wait_online(self, key: str, proc: subprocess.Popen[bytes] | None = None,
                    timeout: float = ONLINE_TIMEOUT_S) -> bool:
        """True once the node with admitted key ``key`` is online; False if ``proc`` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            live = {n.name: n.live_status for n in list_nodes(self.coordinator_state)}
            if live.get(key) == "online":
                return True
            time.sleep(1.0)
        raise AssertionError(f"node {key} did not come online within {timeout:.0f} s")

    # ------------------------------------------------------------------ hostile runs
    def run_hostile(self, app_dir: Path, overrides: dict[str, Any],
                    phases: list[Any] | None = None) -> HostileResult:
        """Submit the hostile App ``app_dir`` with ``overrides`` on fedmodel's run config; wait for its end.

        ``phases`` is the hostile ServerApp's plan (:mod:`apps.hostile_server`). The run gets a fresh ``run-id``
        and an ``out`` folder of its own (unless ``overrides`` sets them).
        """
        with self._lock:
            self.runs += 1
            out = self.root / "hostile" / f"{self.runs:02d}-{app_dir.name}"
        out.mkdir(parents=True)
        (out / "plan.json").write_text(json.dumps({"phases": phases or []}), encoding="utf-8")
        config = {"dataset": "breast-cancer", "clients": 4, "rounds": 1, "epsilon": RUN_EPSILON,
                  "out": str(out), "run-id": f"hostile-{uuid.uuid4().hex[:12]}", **overrides}
        staged = stage_app(app_dir, out / "app")
        home = out / "flwr-home"
        env = flower_env(home, {"default": CONNECTION,
                                CONNECTION: {"address": self.address, "root-certificates": str(self.ca)}})
        flower_id = submit(staged, env, CONNECTION, ["-c", run_config_arg(config)])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        status, details = "unknown", ""
        while time.monotonic() < deadline:
            status, details = run_status(flower_id, env, CONNECTION)
            if status.startswith("finished"):
                break
            time.sleep(2.0)
        else:
            raise AssertionError(f"hostile run {flower_id} did not finish in {RUN_TIMEOUT_S:.0f} s ({status})")
        result_file = out / "result.json"
        assert result_file.is_file(), f"the hostile ServerApp wrote no result ({status}: {details})"
        result = json.loads(result_file.read_text(encoding="utf-8"))
        assert result["error"] is None, f"the hostile ServerApp failed:\n{result['error']}"
        return HostileResult(str(config["run-id"]), flower_id, status, details, result["replies"], result["secagg"],
                             out)

    def run_hostile_many(self, runs: dict[str, tuple[Path, dict[str, Any], list[Any]]]) -> dict[str, HostileResult]:
        """Several hostile runs at once (Flower runs them side by side): ``{name: (app_dir, overrides, phases)}``."""
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            futures = {name: pool.submit(self.run_hostile, *args) for name, args in runs.items()}
            return {name: future.result() for name, future in futures.items()}

    # ------------------------------------------------------------------ what a node keeps
    def ledger(self, label: str, owner: str | None = None) -> dict[str, Any]:
        """``fedmodel ledger show --state-dir ... --format json`` of a node (with ``--owner``: its entries too)."""
        args = ["ledger", "show", "--state-dir", str(self.state_dir(label)), "--format", "json"]
        shown = fedmodel(*args, *(["--owner", owner] if owner else []))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        return json.loads(shown.stdout)

    def ledger_entries(self, label: str, run_id: str, owner: str | None = None) -> list[dict[str, Any]]:
        """The ledger entries a node holds for one run."""
        owner = owner or label
        shown = fedmodel("ledger", "show", "--state-dir", str(self.state_dir(label)), "--owner", owner,
                         "--format", "json")
        if shown.returncode != 0 and "has no entry" in shown.stdout + shown.stderr:
            return []  # the owner never spent anything here
        assert shown.returncode == 0, shown.stdout + shown.stderr
        return [e for e in json.loads(shown.stdout).get("entries", []) if e["run_id"] == run_id]

    def audit(self, label: str) -> list[dict[str, Any]]:
        """The node's audit log entries (JSON lines)."""
        path = self.state_dir(label) / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def audit_of_run(self, label: str, run_id: str) -> list[dict[str, Any]]:
        return [e for e in self.audit(label) if e.get("fields", {}).get("run_id") == run_id]


def run_config_arg(values: dict[str, Any]) -> str:
    """``flwr run -c``'s value: space-separated ``key=value`` pairs with TOML values."""
    def toml(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        return json.dumps(str(value))

    return " ".join(f"{k}={toml(v)}" for k, v in values.items())


def coordinator_env() -> dict[str, str]:
    """The hostile coordinator's environment: its processes import ``coordinator_side/sitecustomize.py``."""
    path = [str(Path(__file__).resolve().parent / "coordinator_side"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def stage_app(app_dir: Path, dest: Path) -> Path:
    """A copy of the hostile App with fedmodel's own run-config defaults.

    The hostile ServerApp is not in the FAB: the coordinator runs it on its own machine
    (``coordinator_side/sitecustomize.py``), as a real hostile coordinator would.
    """
    shutil.copytree(app_dir, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    project = tomllib.loads((dest / "pyproject.toml").read_text(encoding="utf-8"))
    defaults = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    project["tool"]["flwr"]["app"]["config"] = defaults
    (dest / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return dest


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


def write_shards(folder: Path) -> tuple[dict[str, Path], Path]:
    """Breast-cancer rows of five owners (CSV, word labels) and the coordinator's held-out file."""
    split = federated_split(RunConfig(dataset="breast-cancer", clients=len(SITES) + 1))
    paths: dict[str, Path] = {}
    for i, site in enumerate((*SITES, SPARE)):
        shard = split.owner(i)
        paths[site] = folder / f"{site}.csv"
        write_csv(paths[site], shard.x, shard.y)
    test = split.test()
    heldout = folder / "coordinator-heldout.csv"
    write_csv(heldout, test.x, test.y)
    return paths, heldout


@pytest.fixture(scope="session")
def federation() -> Iterator[Federation]:
    """Coordinator (TLS + node authentication), five admitted sites, four running nodes; all stopped at the end.

    The folder is a temporary directory of its own, not pytest's ``tmp_path``: pytest removes old base folders
    when another session starts, which would delete the nodes' state under their feet on a shared machine.
    It is removed at the end unless ``FEDMODEL_KEEP_REDTEAM`` is set.
    """
    root = Path(tempfile.mkdtemp(prefix="fedmodel-redteam-"))
    address = f"127.0.0.1:{free_port()}"
    certs, state, keys = root / "certs", root / "coordinator", root / "keys"
    coordinator: subprocess.Popen[bytes] | None = None
    fed: Federation | None = None
    started = time.monotonic()
    try:
        shards, heldout = write_shards(root)
        with ThreadPoolExecutor() as pool:  # independent commands at once: each pays the CLI's start-up
            made = list(pool.map(lambda args: fedmodel(*args), [
                ("certs", "init", "--out", str(certs), "--host", "localhost", "--host", "127.0.0.1"),
                *[("node", "keygen", "--out", str(keys), "--name", site) for site in shards]]))
        assert [m.returncode for m in made] == [0] * len(made), [m.stderr for m in made]
        coordinator = start(["coordinator", "start", "--certs", str(certs), "--state-dir", str(state),
                             "--address", address], root / "coordinator.log", env=coordinator_env())
        wait_for_superlink(address, certs / "ca.crt", coordinator)
        for site in shards:
            allowed = fedmodel("coordinator", "allow-node", str(keys / f"{site}.pub"), "--state-dir", str(state),
                               "--name", site)
            assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        fed = Federation(root, address, certs / "ca.crt", state, keys, shards, heldout)
        fed.node_ids = {n.name: n.node_id for n in read_nodes(state)}
        for site in SITES:
            fed.start_node(site)
        for site in SITES:
            fed.wait_online(site, fed.procs[site])
        print(f"red-team federation up in {time.monotonic() - started:.1f} s")
        yield fed
    finally:
        if fed is not None:
            stop(list(fed.procs.values()))  # the nodes together, then their coordinator
        if coordinator is not None:
            stop([coordinator])
    assert left_running(root) == []  # every process of the federation is gone
    if not os.environ.get("FEDMODEL_KEEP_REDTEAM"):
        shutil.rmtree(root, ignore_errors=True)
