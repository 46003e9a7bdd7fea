"""A short-lived Ray driver that looks at a cluster: ``python -m fedmodel.simulations.ray_probe ADDRESS TIMEOUT_S``.

Run in its own process by :func:`fedmodel.simulations.cluster.check_cluster`, which kills it when its time is
up (``ray.init`` on an address that accepts connections but is no Ray GCS can retry for minutes).
It prints one JSON line: ``{"nodes": [{"id", "ip", "cpus", "gpus", "version" | "error"}]}`` with the
fedmodel version that a task pinned to each alive node imports there, or ``{"error": ...}``.
The tasks get the same ``PYTHONPATH`` runtime env as Flower's actors (the driver's ``sys.path``),
so a node that cannot import fedmodel here cannot run the ClientApp either.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def fedmodel_version() -> str:
    """Runs on a Ray worker; pickled by value (this module runs as ``__main__``)."""
    import fedmodel

    return str(fedmodel.__version__)


def probe(address: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = os.pathsep.join(p for p in sys.path if p and p != os.getcwd())
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False,  # type: ignore[arg-type]  # ray.init accepts a level name too
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    except Exception as exc:  # a Ray version mismatch, a refused connection, ...
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(fedmodel_version)
        refs = {
            node["NodeID"]: task.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote()
            for node in nodes
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=max(deadline - time.monotonic(), 0.1))
        out = []
        for node in nodes:
            resources = node.get("Resources", {})
            entry: dict[str, Any] = {"id": node["NodeID"], "ip": node.get("NodeManagerAddress", "?"),
                                     "cpus": float(resources.get("CPU", 0.0)),
                                     "gpus": float(resources.get("GPU", 0.0))}
            ref = refs[node["NodeID"]]
            if ref not in ready:
                entry["error"] = "no answer from its workers in time (busy, or still starting)"
            else:
                try:
                    entry["version"] = ray.get(ref)
                except Exception as exc:
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    entry["error"] = lines[-1].strip() if lines else type(exc).__name__
            out.append(entry)
        return {"nodes": out}
    finally:
        ray.shutdown()


def main() -> None:
    address, timeout_s = sys.argv[1], float(sys.argv[2])
    print(json.dumps(probe(address, timeout_s)), flush=True)


if __name__ == "__main__":
    main()
