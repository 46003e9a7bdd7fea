"""A hostile coordinator's ServerApp: sends exactly the messages a plan file asks for and writes every reply down.

Not in any FAB: the hostile coordinator runs it on its own machine (``coordinator_side/sitecustomize.py``
swaps it in for the ServerApp the FAB names), beside the real SuperLink; it reads ``<out>/plan.json`` (``out`` is the run-config key fedmodel
already has, so the nodes accept the run config) and writes ``<out>/result.json``.

The plan is a list of phases, run in order. A phase is either a list of messages sent together with
``Grid.send_and_receive`` (one per node at a time, so the nodes work in parallel), or one SecAgg+ round driven
by Flower's own ``SecAggPlusWorkflow`` against the nodes' real SecAgg+ mod. Messages are built as fedmodel's
strategy builds them (``server/strategy.py``, FedAvg's ``configure_train``): a RecordDict with an ArrayRecord
``arrays`` (the global model) and a ConfigRecord ``config`` (``lr``, the schema keys ``schema-features`` and
``schema-labels`` that ``Schema.from_config`` reads, the scaling keys, and ``server-round``).

Only Flower and numpy are imported: nothing of fedmodel's coordinator code is trusted or needed here.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
TIMEOUT_S = 300.0
SECAGG_NAMES_KEY = "fedmodel-array-names"  # fedmodel.protocol: the array names of a SecAgg+ train message
TYPES = {"train": MessageType.TRAIN, "evaluate": MessageType.EVALUATE, "query": MessageType.QUERY}


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the plan's phases in order; write every reply (or the failure) to ``<out>/result.json``."""
    out = Path(str(context.run_config["out"]))
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    result: dict[str, Any] = {"replies": {}, "secagg": {}, "error": None}
    try:
        wait_for_nodes(grid, {int(n) for phase in plan["phases"] for n in phase_nodes(phase)})
        for phase in plan["phases"]:
            if isinstance(phase, dict) and phase.get("kind") == "secagg":
                result["secagg"][phase["id"]] = secagg_round(grid, phase, context.run_id)
                continue
            messages = [build_message(spec) for spec in phase]
            replies = {r.metadata.reply_to_message_id: r for r in grid.send_and_receive(messages, timeout=TIMEOUT_S)}
            for spec, msg in zip(phase, messages, strict=True):
                reply = replies.get(msg.metadata.message_id)
                result["replies"][spec["id"]] = describe(reply) if reply is not None else {"error": "no reply"}
    except Exception:  # the test reads the traceback from result.json
        result["error"] = traceback.format_exc()
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")


def phase_nodes(phase: Any) -> list[int]:
    if isinstance(phase, dict):
        return list(phase["nodes"])
    return [spec["node"] for spec in phase]


def wait_for_nodes(grid: Grid, wanted: set[int], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not wanted <= set(grid.get_node_ids()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes {sorted(wanted - set(grid.get_node_ids()))} never connected")
        time.sleep(0.5)


def arrays_of(spec: dict[str, Any]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value, dtype=np.float32)) for name, value in spec["arrays"].items()})


def build_message(spec: dict[str, Any]) -> Message:
    """One message as fedmodel's strategy builds it: ``arrays`` (the model) and ``config`` (with ``server-round``)."""
    content = RecordDict({"arrays": arrays_of(spec), "config": ConfigRecord(spec["config"])})
    return Message(content=content, message_type=TYPES[spec["type"]], dst_node_id=int(spec["node"]))


def describe(reply: Message) -> dict[str, Any]:
    """A reply as JSON: its error reason, or every record it holds."""
    if reply.has_error():
        return {"error": reply.error.reason, "node": int(reply.metadata.src_node_id)}
    out: dict[str, Any] = {"error": None, "node": int(reply.metadata.src_node_id), "metrics": {}, "configs": {},
                           "arrays": {}}
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            out["arrays"][name] = {k: v.numpy().tolist() for k, v in record.items()}
        elif isinstance(record, MetricRecord):
            out["metrics"][name] = dict(record)
        elif isinstance(record, ConfigRecord):
            out["configs"][name] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()
                                    if not isinstance(v, list) or all(not isinstance(i, bytes) for i in v)}
    return out


# ---------------------------------------------------------------------------------------------- SecAgg+
class _Handoff(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives: our train messages in, the unmasked aggregate out."""

    def __init__(self, fitins: list[tuple[ClientProxy, FitIns]]) -> None:
        self.fitins = fitins
        self.aggregate: list[np.ndarray] | None = None
        self.failures: list[str] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return self.fitins

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.failures = [repr(f) for f in failures]
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[Any]) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _Watched:
    """The grid as the workflow sees it, keeping every node's error replies (a refusal's reason)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.errors: dict[int, list[str]] = {}
        self.stages = 0

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self._grid.send_and_receive(list(messages), timeout=timeout))
        self.stages += 1
        for reply in replies:
            if reply.has_error():
                self.errors.setdefault(int(reply.metadata.src_node_id), []).append(reply.error.reason)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def secagg_round(grid: Grid, phase: dict[str, Any], run_id: int) -> dict[str, Any]:
    """One SecAgg+ train round (Flower's workflow, the nodes' real mod) over ``phase["nodes"]``; the aggregate."""
    arrays = arrays_of(phase)
    names = list(arrays.keys())
    config = {**phase["config"], SECAGG_NAMES_KEY: names}
    fitins = FitIns(parameters=ndarrays_to_parameters([arrays[n].numpy() for n in names]), config=config)
    handoff = _Handoff([(GridClientProxy(int(node), grid, run_id), fitins) for node in phase["nodes"]])
    n = len(phase["nodes"])
    workflow = SecAggPlusWorkflow(n, phase["threshold"], max_weight=1000.0, clipping_range=8.0,
                                  quantization_range=2 ** (31 - int(np.ceil(np.log2(max(n, 2))))),
                                  modulus_range=2**32, timeout=TIMEOUT_S)
    state = RecordDict()
    state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: int(phase["config"]["server-round"])})
    state[MAIN_PARAMS_RECORD] = ArrayRecord()
    legacy = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}), strategy=handoff)
    watched = _Watched(grid)
    workflow(watched, legacy)  # type: ignore[arg-type]
    return {"aggregate": None if handoff.aggregate is None else [a.tolist() for a in handoff.aggregate],
            "errors": {str(k): v for k, v in watched.errors.items()}, "failures": handoff.failures,
            "stages": watched.stages}
