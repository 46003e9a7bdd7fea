"""Where a simulation's Ray workers run, checked before Flower starts.

Without ``ray-address`` the simulation starts a private local Ray; this module checks that this
machine can host one worker. With ``ray-address`` it checks the existing cluster within a bounded
time (30 s by default) and fails with one message saying what to fix:

1. a TCP connection to the address (refused or silent: unreachable);
2. a short-lived Ray driver in a subprocess (``fedmodel.simulations.ray_probe``), killed when time is up,
   that lists the alive nodes and runs one tiny task pinned to each, returning the fedmodel version
   its workers import;
3. :func:`assess`: a node must fit one worker (Flower's pool is
   ``sum(min(cpu // cpus-per-worker, gpu // gpus-per-worker))`` over the nodes' total resources;
   an empty pool fails only after start-up, as "ActorPool is empty") and every such node must run
   this machine's fedmodel version.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from fedmodel import __version__
from fedmodel.errors import FedModelError

CHECK_TIMEOUT_S = 30.0
DEFAULT_GCS_PORT = 6379


class RayClusterError(FedModelError):
    """The Ray cluster (or this machine) cannot run the simulation's workers; the message says what to fix."""

    exit_code = 2


@dataclass(frozen=True)
class RayNode:
    """One alive Ray node as the probe saw it."""

    id: str
    ip: str
    cpus: float
    gpus: float
    version: str | None = None
    error: str | None = None

    def fits(self, cpus: int, gpus: float) -> bool:
        return self.cpus >= cpus and self.gpus >= gpus

    def workers(self, cpus: int, gpus: float) -> int:
        """How many of Flower's actors this node hosts (Flower's own pool formula)."""
        by_cpu = int(self.cpus // cpus)
        return min(by_cpu, int(self.gpus // gpus)) if gpus > 0 else by_cpu

    def __str__(self) -> str:
        return f"{self.ip} ({self.id[:8]}): {self.cpus:g} CPU, {self.gpus:g} GPU"


def check_local(cpus: int, gpus: float) -> None:
    """This machine must fit one worker of a private local Ray: fail before starting, not with an empty pool."""
    have_cpus = os.cpu_count() or 1
    if cpus > have_cpus:
        raise RayClusterError(
            f"cpus-per-worker = {cpus}: this machine has {have_cpus} CPUs, so no simulation worker fits; "
            f"use --cpus-per-worker {have_cpus} or less, or a Ray cluster with --ray-address"
        )
    if gpus > 0:
        import torch

        have_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have_gpus < gpus:
            raise RayClusterError(
                f"gpus-per-worker = {gpus:g}: this machine has {have_gpus} usable CUDA GPUs, so no simulation "
                "worker fits; use --gpus-per-worker 0, or run on a Ray cluster with GPUs (--ray-address)"
            )


def check_cluster(address: str, cpus: int, gpus: float, *, timeout_s: float = CHECK_TIMEOUT_S,
                  expected_version: str = __version__) -> list[RayNode]:
    """The cluster's alive nodes if it can run the workers; RayClusterError within ``timeout_s`` otherwise."""
    deadline = time.monotonic() + timeout_s
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayClusterError(
            f"cannot reach the Ray cluster at {address}: {reason}. Start it with `ray start --head` on the head "
            f"host and pass its GCS address (HOST:{DEFAULT_GCS_PORT} by default, or ray://HOST:10001), and "
            "check that this machine can connect to that port"
        ) from None
    answer = _run_probe(address, deadline, timeout_s)
    if "error" in answer:
        raise RayClusterError(f"cannot connect to the Ray cluster at {address}: {answer['error']}")
    nodes = [RayNode(**n) for n in answer.get("nodes", [])]
    problem = assess(nodes, cpus, gpus, expected_version)
    if problem:
        raise RayClusterError(f"the Ray cluster at {address} cannot run this simulation: {problem}")
    return nodes


def assess(nodes: list[RayNode], cpus: int, gpus: float, expected_version: str) -> str | None:
    """The one thing to fix about these nodes, or None when they can run the workers."""
    if not nodes:
        return "it has no alive node"
    fitting = [n for n in nodes if n.fits(cpus, gpus)]
    if not fitting:
        listed = "; ".join(str(n) for n in nodes)
        return (f"no node has the {cpus} CPU and {gpus:g} GPU that one worker asks for (nodes: {listed}); "
                "lower --cpus-per-worker / --gpus-per-worker or add a node that has them")
    broken = [n for n in fitting if n.version is None]
    if broken:
        listed = "; ".join(f"{n.ip} ({n.id[:8]}): {n.error}" for n in broken)
        return (f"fedmodel could not be checked on its workers ({listed}); every worker host needs this Python "
                "environment, with fedmodel installed, at the same paths")
    other = [n for n in fitting if n.version != expected_version]
    if other:
        listed = "; ".join(f"{n.ip} ({n.id[:8]}) runs fedmodel {n.version}" for n in other)
        return (f"its workers run another fedmodel version than this machine ({expected_version}): {listed}; "
                f"install fedmodel {expected_version} on every worker host")
    return None


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"ray-address = {address!r}: expected HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def _run_probe(address: str, deadline: float, timeout_s: float) -> dict[str, Any]:
    """Run ``fedmodel.simulations.ray_probe`` and parse its JSON line; its whole process group dies at the deadline."""
    budget = deadline - time.monotonic()
    cmd = [sys.executable, "-m", "fedmodel.simulations.ray_probe", address, f"{max(budget - 8.0, 2.0):.1f}"]
    env = {**os.environ, "RAY_ADDRESS": address, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=max(budget, 1.0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise RayClusterError(
            f"the Ray cluster at {address} did not answer within {timeout_s:.0f} s: the port accepts "
            f"connections but no Ray GCS answered (is it the head's GCS port, {DEFAULT_GCS_PORT} by default, or the "
            "Ray Client port of a ray:// address? do this machine's and the cluster's Ray versions match?)"
        ) from None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except json.JSONDecodeError:
                break
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"the probe exited with code {proc.returncode}: {tail}"}


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
