"""A round's train stage under secure aggregation: Flower's SecAgg+ workflow inside fedmodel's round loop.

fedmodel's strategy still samples the nodes and writes the train message (global arrays + train
config, central-DP settings included). A minimal legacy strategy hands those messages to Flower's
:class:`~flwr.server.workflow.SecAggPlusWorkflow` for one round, which runs the four SecAgg+ stages
(setup, share keys, collect masked vectors, unmask) and returns only the example-weighted mean of
the owners' deltas. Each owner's reply comes back to fedmodel's strategy with its own metrics and
privacy state (SecAgg+ does not hide them) and, in place of its update, the aggregate; so the
recorder, the min-clients check, FedAdam, the central-DP wrapper and checkpoints work unchanged,
and update validation applies to the aggregate (the coordinator never sees an owner's update).

Quantisation: an owner sends ``round(d_i * delta_i)``-style integers: its delta clipped to
``+-CLIPPING_RANGE`` and scaled by ``d_i = round(w_i / max_weight * T) / T`` (``w_i`` its example
count), stochastically rounded on a grid of ``2 * CLIPPING_RANGE / T``. Per coordinate the result
differs from the example-weighted mean by less than :func:`quantisation_bound`.

Dropouts: an owner lost before it sends its masked vector is left out of the sum (its pairwise
masks are removed with shares held by its neighbours); an owner lost later is still in it. When an
owner keeps fewer than ``secagg-threshold`` live neighbours at any stage, the masks cannot be
removed and SecAgg+ halts: the round raises :class:`~fedmodel.errors.BelowMinimumError` (retried
with ``below-minimum = retry``). ``round-timeout`` applies to each of the four stages.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from fedmodel.server.validation import validate_update
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message.message import make_message
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
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedmodel.config import RunConfig
from fedmodel.errors import BelowMinimumError, FedModelError
from fedmodel.protocol import SECAGG_NAMES_KEY

log = logging.getLogger("fedmodel.server")

CLIPPING_RANGE = 8.0
"""SecAgg+ clips each coordinate of an owner's (weighted) delta to +-this before quantising (Flower's default)."""
MODULUS_RANGE = 2**32
"""The masks' modulus (Flower's default and maximum)."""
DEFAULT_MAX_WEIGHT = 100_000
"""The largest example count SecAgg+ expects before any owner has said its own (round 1 of a deployment)."""
_FITRES_RECORDS = ("fitres.parameters", "fitres.metrics", "fitres.num_examples", "fitres.status", RECORD_KEY_CONFIGS)


class SecureAggregateRejected(FedModelError):
    """The securely aggregated update failed validation (max-update-norm, NaN, ...); it was not applied."""


def quantisation_range(nodes: int) -> int:
    """Quantisation levels T: as fine as the 32-bit modulus allows for ``nodes`` summands (at most 2**30).

    Each owner sends integers in [0, T]; the sum of ``nodes`` of them must stay below the modulus
    (2**32) and each below 2**31 (Flower rounds in int32).
    """
    return 2 ** min(30, 31 - math.ceil(math.log2(max(nodes, 2))))


def quantisation_bound(weights: Sequence[float], deltas: Sequence[np.ndarray], *, max_weight: float,
                       levels: int, clipping_range: float = CLIPPING_RANGE) -> np.ndarray:
    """Per-coordinate bound on |SecAgg+ mean - example-weighted mean| of ``deltas`` (each within the clip range).

    An owner's weight is quantised to ``q_i = round(w_i / max_weight * T)`` and its scaled delta is
    stochastically rounded (error < 1 level of ``2c / T``). With ``Q = sum q_i`` the result is the
    q-weighted mean plus less than ``2 c n / Q``, and the q-weighted mean differs from the
    w-weighted one by at most ``sum_i |delta_i - mean| / (2 Q)``.
    """
    q = np.array([round(w / max_weight * levels) for w in weights], dtype=np.float64)
    total = float(q.sum())
    w = np.asarray(weights, dtype=np.float64)
    mean = sum(wi * d for wi, d in zip(w, deltas, strict=True)) / w.sum()
    spread = sum(np.abs(d - mean) for d in deltas)
    return (2 * clipping_range * len(deltas) + spread / 2) / total


def secure_train(strategy: Any, grid: Grid, config: RunConfig, server_round: int, arrays: ArrayRecord,
                 train_config: ConfigRecord, timeout: float | None) -> ArrayRecord:
    """One train stage under SecAgg+: the new global arrays (``arrays`` if the strategy returns none).

    ``strategy`` is one of :func:`fedmodel.server.strategy.build_strategy`'s (possibly DP-wrapped). Raises
    BelowMinimumError when too few nodes are connected or SecAgg+ halts, SecureAggregateRejected
    when the aggregate fails validation.
    """
    recorder = strategy.recorder
    messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
    threshold = config.secagg_threshold_resolved
    if len(messages) <= threshold:
        raise BelowMinimumError(f"round {server_round}: secure aggregation needs more than secagg-threshold = "
                                f"{threshold} owners' nodes, {len(messages)} connected")
    names = list(arrays.keys())
    shares = min(config.secagg_shares_resolved, len(messages))
    max_weight = 1.0 if config.central_dp != "none" else _max_weight(recorder)  # central DP: equal weights
    levels = quantisation_range(len(messages))
    workflow = SecAggPlusWorkflow(shares, threshold, max_weight=max_weight, clipping_range=CLIPPING_RANGE,
                                  quantization_range=levels, modulus_range=MODULUS_RANGE, timeout=timeout)
    handoff = _Handoff([(GridClientProxy(int(m.metadata.dst_node_id), grid, 0), _fitins(m, names))
                        for m in messages])
    watched = _WatchedGrid(grid)
    started = time.monotonic()
    workflow(watched, _legacy_context(handoff, server_round, arrays))  # type: ignore[arg-type]  # the workflow takes fedmodel's wrapped Grid
    seconds = time.monotonic() - started
    sent, replies = watched.last_exchange()
    recorder.train_sent(server_round, sent, replies)
    recorder.folder.event("secure-aggregation", round=server_round, nodes=len(messages), shares=shares,
                          threshold=threshold, max_weight=max_weight, levels=levels,
                          completed=handoff.aggregate is not None, seconds=round(seconds, 3))
    reached_masking = len(watched.stages) >= 3
    if handoff.aggregate is None:
        owners = [_owner_reply(r, None, reached_masking) for r in replies]
        if any(r.has_error() or not _before_masking(r) for r in replies):  # an owner failed, or trained
            recorder.train_replies(server_round, owners)  # records both; raises when every owner failed
        raise BelowMinimumError(f"round {server_round}: secure aggregation halted: an owner kept fewer than "
                                f"secagg-threshold = {threshold} live neighbours, so the masks cannot be removed "
                                f"({recorder.shortfall(server_round)})")
    new = _apply(arrays, names, handoff.aggregate)
    bound = config.max_update_norm if config.max_update_norm > 0 else None
    reason = validate_update(arrays.to_torch_state_dict(), new, 1.0, max_update_norm=bound, max_examples=1)
    if reason is not None:
        recorder.train_replies(server_round, [_owner_reply(r, None, True) for r in replies])
        raise SecureAggregateRejected(f"round {server_round}: the securely aggregated update was rejected: {reason}")
    record = ArrayRecord(new)
    aggregated, _ = strategy.aggregate_train(server_round, [_owner_reply(r, record, True) for r in replies])
    return aggregated if aggregated is not None else arrays


# ---------------------------------------------------------------------------------------------- internals
class _Handoff(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives: fedmodel's train messages in, the aggregate out."""

    def __init__(self, fitins: list[tuple[ClientProxy, FitIns]]) -> None:
        self.fitins = fitins
        self.aggregate: list[np.ndarray] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return self.fitins

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]) -> tuple[Parameters | None,
                                                                                              dict[str, Scalar]]:
        if not results:  # every FitRes holds the unmasked aggregate; none means nothing was aggregated
            return None, {}
        parameters = results[0][1].parameters
        self.aggregate = parameters_to_ndarrays(parameters)
        return parameters, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException]) -> tuple[
                               float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _WatchedGrid:
    """The grid as the workflow sees it, keeping every stage's messages and replies."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.stages: list[tuple[list[Message], list[Message]]] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        sent = list(messages)
        replies = list(self._grid.send_and_receive(sent, timeout=timeout))
        self.stages.append((sent, replies))
        return replies

    def last_exchange(self) -> tuple[list[Message], list[Message]]:
        """Per node, the last message of the first three stages and its reply (if one came)."""
        last: dict[int, Message] = {}
        answer: dict[int, Message] = {}
        for sent, replies in self.stages[:3]:
            by_id = {r.metadata.reply_to_message_id: r for r in replies}
            for msg in sent:
                node = int(msg.metadata.dst_node_id)
                last[node] = msg
                answer.pop(node, None)
                if msg.metadata.message_id in by_id:
                    answer[node] = by_id[msg.metadata.message_id]
        return list(last.values()), list(answer.values())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _fitins(msg: Message, names: list[str]) -> FitIns:
    """fedmodel's train message as legacy FitIns; the array names travel in the config (Parameters have none)."""
    arrays = msg.content["arrays"]
    config: dict[str, Any] = dict(msg.content["config"])
    config[SECAGG_NAMES_KEY] = names
    return FitIns(parameters=ndarrays_to_parameters([arrays[n].numpy() for n in names]), config=config)  # type: ignore[union-attr]  # the train message's "arrays" is an ArrayRecord


def _legacy_context(handoff: _Handoff, server_round: int, arrays: ArrayRecord) -> LegacyContext:
    state = RecordDict()
    state[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    state[MAIN_PARAMS_RECORD] = ArrayRecord()  # the workflow takes the parameters from the FitIns
    context = Context(run_id=0, node_id=0, node_config={}, state=state, run_config={})
    return LegacyContext(context, strategy=handoff)


def _max_weight(recorder: Any) -> float:
    """The largest example count an owner has reported in this run, else :data:`DEFAULT_MAX_WEIGHT`."""
    seen = [m.get("num-examples", 0.0) for m in recorder.owner_train.values()]
    return float(max(seen)) if seen and max(seen) > 0 else float(DEFAULT_MAX_WEIGHT)


def _apply(arrays: ArrayRecord, names: list[str], deltas: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """The global arrays plus the aggregated deltas, in the global arrays' dtypes."""
    if len(deltas) != len(names):
        raise SecureAggregateRejected(f"SecAgg+ returned {len(deltas)} arrays for a model of {len(names)}")
    out = {}
    for name, delta in zip(names, deltas, strict=True):
        ref = arrays[name].numpy()
        new = ref.astype(np.float64) + delta.reshape(ref.shape)
        out[name] = torch.from_numpy(np.asarray(np.rint(new) if ref.dtype.kind in "iu" else new).astype(ref.dtype))
    return out


def _before_masking(reply: Message) -> bool:
    """A setup or share-keys answer (the protocol stopped before this owner trained)."""
    records = reply.content.config_records
    return RECORD_KEY_CONFIGS in records and "fitres.status" not in records


def _owner_reply(reply: Message, aggregate: ArrayRecord | None, reached_masking: bool) -> Message:
    """A node's last SecAgg+ reply as fedmodel's train reply: its own records, the aggregate as its arrays."""
    if reply.has_error():
        return reply
    if _before_masking(reply):
        why = "SecAgg+ halted before the masked-vector stage" if not reached_masking else "no masked vector"
        return make_message(metadata=reply.metadata, error=Error(
            code=ErrorCode.UNKNOWN, reason=f"node {reply.metadata.src_node_id}: {why}; this owner did not train"))
    content = RecordDict()
    if aggregate is not None:
        content["arrays"] = aggregate
    for name, record in reply.content.items():
        if name not in _FITRES_RECORDS:
            content[name] = record
    return make_message(metadata=reply.metadata, content=content)
