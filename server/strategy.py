"""Strategy choice: Flower's own strategies, with reply screening and the run recorder mixed in.

``strategy`` picks FedAvg, FedProx or FedAdam; with FedAvg, ``aggregation`` may swap the weighted
mean for one of Flower's robust aggregators (FedMedian, FedTrimmedAvg, Krum, MultiKrum). Whatever
aggregates, every train reply is screened first (:func:`server.validation.validate_update` against
the arrays sent that round); a rejected reply becomes an error reply, so the recorder reports it
as that owner's failure with the reason and it never reaches the global model.

Dropouts: each round samples every connected node. The first round of a run (or the
scaling-statistics query before it, ``server.stats``) waits for all ``clients`` nodes, at most
``round-timeout`` seconds; later rounds take the nodes connected then (a node that dropped out
joins the next round after it is back), waiting only while fewer than ``min-clients`` are
connected (without a time-out, and when ``min-clients`` is not set: for all of them, as Flower
does). A round needs ``min-clients`` valid replies (1 when not set) to aggregate;
fewer raise :class:`~fedmodel.errors.BelowMinimumError` before anything is aggregated. Flower's own
sampling would wait forever for a node that died (shared/facts/flower-deployment.md, section 5).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.fedopt import FedOpt

from fedmodel.config import RunConfig
from fedmodel.errors import BelowMinimumError
from fedmodel.owners import owner_order as _owner_order  # the one owner ordering, as the recorder's
from server.recorder import RunRecorder, owner_of, records
from server.validation import validate_update

log = logging.getLogger("fedmodel.server")

DEFAULT_MAX_EXAMPLES = 2**53
"""The example-count bound when none is given: only non-finite, non-positive or absurd counts are rejected."""

_MetricLayout = tuple[str, frozenset[str]]


class RecordingMixin:
    """Screens every round's train replies, reports them to a :class:`RunRecorder`, then lets Flower aggregate.

    Mixed in front of any Message-API strategy, so aggregation itself stays Flower's. Set
    ``recorder`` (required), ``max_update_norm`` (None = no bound) and ``max_examples``.
    """

    recorder: RunRecorder
    max_update_norm: float | None = None
    max_examples: int = DEFAULT_MAX_EXAMPLES
    expected_nodes: int = 1  # every owner's node
    min_connected: int = 1
    min_replies: int = 1
    round_timeout: float | None = None
    _reference: dict[str, torch.Tensor] | None = None
    _started: bool = False  # the first round (which waits for every node) is done

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.recorder.round_started(server_round)
        self._reference = arrays.to_torch_state_dict()
        nodes = self.connected_nodes(grid, server_round)
        return super().configure_train(server_round, arrays, config, _Connected(grid, nodes))  # type: ignore[misc]

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        if not nodes:
            return []
        return super().configure_evaluate(server_round, arrays, config, _Connected(grid, nodes))  # type: ignore[misc]

    def connected_nodes(self, grid: Grid, server_round: int, what: str | None = None) -> list[int]:
        """The nodes to sample: all of them once connected, or what is connected when the wait ends.

        The run's first query (the scaling statistics, else round 1) waits for every node; ``what``
        names the step in messages (default ``round N``). Raises BelowMinimumError when fewer than
        ``min_connected`` are connected after ``round_timeout``.
        """
        what = what or f"round {server_round}"
        deadline = None if self.round_timeout is None else time.monotonic() + self.round_timeout
        wanted = self.expected_nodes if not self._started else self.min_connected
        self._started = True
        logged = 0.0
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= wanted or (deadline is None and len(nodes) >= self.min_connected):
                return nodes
            if deadline is not None and time.monotonic() >= deadline:
                if len(nodes) >= self.min_connected:
                    return nodes
                raise BelowMinimumError(
                    f"{what}: {len(nodes)} of {self.expected_nodes} owners' nodes connected after "
                    f"{self.round_timeout:g} s; min-clients needs {self.min_connected}"
                )
            if time.monotonic() - logged > 10:
                logged = time.monotonic()
                log.info("%s: waiting for nodes: %d of %d connected (minimum %d)", what, len(nodes),
                         self.expected_nodes, self.min_connected)
            time.sleep(1.0)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.screen_train_replies(server_round, list(replies))
        replies = self.recorder.train_replies(server_round, replies)
        valid = sorted((msg for msg in replies if not msg.has_error()), key=lambda m: _owner_order(owner_of(m)))
        if len(valid) < self.min_replies:  # before anything touches the model
            raise BelowMinimumError(
                f"round {server_round}: {len(valid)} valid replies, min-clients needs {self.min_replies}: "
                f"{self.recorder.shortfall(server_round)}"
            )
        self._before_aggregation(valid)
        errors = [msg for msg in replies if msg.has_error()]  # in owner order: the sum never depends on arrival
        return super().aggregate_train(server_round, valid + errors)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self.recorder.evaluate_replies(server_round, replies)
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]

    # ------------------------------------------------------------------ screening
    def screen_train_replies(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies with every invalid one replaced by an error reply saying why it was rejected."""
        reference = self._reference
        if reference is None:
            raise RuntimeError("aggregate_train before configure_train: no global model to check updates against")
        layout = _common_metric_layout(replies)
        out = []
        for msg in replies:
            reason = None if msg.has_error() else self.reply_problem(msg, reference, layout)
            if reason is None:
                out.append(msg)
                continue
            who = _sender(msg)
            self.recorder.rejected_reply(msg)  # the owner still spent privacy training it: keep its numbers
            log.warning("round %d: rejected the update of %s: %s", server_round, who, reason)
            out.append(make_message(metadata=msg.metadata,
                                    error=Error(code=ErrorCode.UNKNOWN, reason=f"{who}: update rejected: {reason}")))
        return out

    def reply_problem(self, msg: Message, reference: dict[str, torch.Tensor],
                      layout: _MetricLayout | None) -> str | None:
        """Why a (non-error) train reply must not be aggregated, or None.

        ``reference`` is the global model sent this round; ``layout`` the metric record most replies share.
        """
        key: str = self.arrayrecord_key  # type: ignore[attr-defined]
        weight_key: str = self.weighted_by_key  # type: ignore[attr-defined]
        arrays, metrics = records(msg, ArrayRecord), records(msg, MetricRecord)
        if list(arrays) != [key]:
            return f"expected one ArrayRecord named {key!r}, got {sorted(arrays)}"
        if len(metrics) != 1:
            return f"expected one MetricRecord, got {len(metrics)}"
        name, record = next(iter(metrics.items()))
        if layout is not None and (name, frozenset(record)) != layout:
            missing, extra = sorted(layout[1] - set(record)), sorted(set(record) - layout[1])
            return (f"its metrics differ from the other replies' ({layout[0]!r}: missing {missing}, "
                    f"unexpected {extra}, record {name!r})")
        lists = sorted(k for k, v in record.items() if isinstance(v, list))
        if lists:
            return f"metrics {lists} are lists, expected numbers"
        if weight_key not in record:
            return f"no {weight_key!r} metric"
        try:
            owner_of(msg)
        except (KeyError, TypeError, ValueError, OverflowError):
            return "cannot tell which owner sent it (no valid 'owner')"
        return validate_update(reference, arrays[key], record[weight_key],  # type: ignore[arg-type]
                               max_update_norm=self.max_update_norm, max_examples=self.max_examples)

    def _before_aggregation(self, valid: list[Message]) -> None:
        """Hook: the replies that will be aggregated are known (MultiKrum sizes its selection)."""


class RecordingFedAvg(RecordingMixin, FedAvg):
    """FedAvg that screens replies and reports to the run recorder."""


class RecordingFedProx(RecordingMixin, FedProx):
    """FedProx that screens replies and reports to the run recorder."""


class RecordingFedAdam(RecordingMixin, FedAdam):
    """FedAdam that screens replies and reports to the run recorder."""


class RecordingFedMedian(RecordingMixin, FedMedian):
    """Coordinate-wise median (FedMedian) that screens replies and reports to the run recorder."""


class RecordingFedTrimmedAvg(RecordingMixin, FedTrimmedAvg):
    """Coordinate-wise trimmed mean (FedTrimmedAvg) that screens replies and reports to the run recorder."""


class RecordingKrum(RecordingMixin, Krum):
    """Krum (the one update closest to its n - F - 2 nearest others) that screens and reports."""


class RecordingMultiKrum(RecordingMixin, MultiKrum):
    """MultiKrum: the weighted mean of the n - F updates with the best Krum scores, n = valid replies."""

    def _before_aggregation(self, valid: list[Message]) -> None:
        self.num_nodes_to_select = max(1, len(valid) - self.num_malicious_nodes)


class _Connected:
    """The grid as Flower's sampling sees it: only the nodes this round chose (so it never waits)."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _common_metric_layout(replies: list[Message]) -> _MetricLayout | None:
    """The MetricRecord name and key set most replies share (Flower requires one layout for all)."""
    found = [records(msg, MetricRecord) for msg in replies if not msg.has_error()]
    layouts = Counter((name, frozenset(record)) for metrics in found if len(metrics) == 1
                      for name, record in metrics.items())
    return layouts.most_common(1)[0][0] if layouts else None


def _sender(msg: Message) -> str:
    """``owner N`` (the recorder reads the owner back from it) or ``node ID`` if the reply does not say."""
    try:
        return f"owner {owner_of(msg)}"
    except (KeyError, TypeError, ValueError, OverflowError, StopIteration):
        return f"node {msg.metadata.src_node_id}"


def _mean_train_loss(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Aggregate only what means something averaged: the example-weighted train loss."""
    total, weight = 0.0, 0.0
    for record in records:
        m = next(iter(record.metric_records.values()))
        loss, n = float(m["train-loss"]), float(m[weight_key])  # type: ignore[arg-type]
        if loss == loss:  # skip NaN (an owner with only empty batches)
            total, weight = total + loss * n, weight + n
    return MetricRecord({"train-loss": total / weight if weight else float("nan")})


def _mean_eval(records: list[RecordDict], weight_key: str) -> MetricRecord:
    total: dict[str, float] = {}
    weight = 0.0
    for record in records:
        m = next(iter(record.metric_records.values()))
        n = float(m[weight_key])  # type: ignore[arg-type]
        weight += n
        for key in ("loss", "accuracy"):
            total[key] = total.get(key, 0.0) + float(m[key]) * n  # type: ignore[arg-type]
    return MetricRecord({k: v / weight for k, v in total.items()} if weight else {})


def build_strategy(config: RunConfig, recorder: RunRecorder, *, max_examples: int | None = None) -> FedAvg:
    """The strategy the config names, expecting every one of ``config.clients`` owners each round.

    ``max_examples`` bounds the example count a reply may claim (for example the run's number of
    training rows); None allows any finite positive count up to :data:`DEFAULT_MAX_EXAMPLES`.
    """
    common: dict[str, Any] = {  # sampling takes every node that connected_nodes() chose
        "fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
        "min_evaluate_nodes": 1, "min_available_nodes": 1,
        "train_metrics_aggr_fn": _mean_train_loss, "evaluate_metrics_aggr_fn": _mean_eval,
    }
    agg = config.aggregation
    strategy: FedAvg
    if config.central_dp != "none":  # equal weights, clipped updates only, in Flower's DP wrapper (below)
        from server import central_dp

        strategy = central_dp.inner_strategy(config, common)
    elif config.strategy == "fedprox":
        strategy = RecordingFedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedadam":
        strategy = RecordingFedAdam(eta=config.server_lr, eta_l=config.lr, **common)
    elif agg.kind == "median":
        strategy = RecordingFedMedian(**common)
    elif agg.kind == "trimmed-mean":
        strategy = RecordingFedTrimmedAvg(beta=agg.beta, **common)
    elif agg.kind == "krum":
        strategy = RecordingKrum(num_malicious_nodes=agg.byzantine, **common)
    elif agg.kind == "multikrum":
        strategy = RecordingMultiKrum(num_malicious_nodes=agg.byzantine, **common)
    else:
        strategy = RecordingFedAvg(**common)
    strategy.recorder = recorder  # type: ignore[attr-defined]
    bound = config.max_update_norm if config.max_update_norm > 0 else None
    strategy.max_update_norm = bound  # type: ignore[attr-defined]
    strategy.max_examples = DEFAULT_MAX_EXAMPLES if max_examples is None else max_examples  # type: ignore[attr-defined]
    strategy.expected_nodes = config.flower_nodes  # type: ignore[attr-defined]
    strategy.min_connected = config.min_connected  # type: ignore[attr-defined]
    strategy.min_replies = config.min_replies  # type: ignore[attr-defined]
    strategy.round_timeout = config.round_timeout or None  # type: ignore[attr-defined]
    if config.central_dp != "none":  # the wrapper passes every other attribute through to the strategy
        return central_dp.wrap(strategy, config)  # type: ignore[no-any-return]
    return strategy


def strategy_state(strategy: FedAvg) -> dict[str, torch.Tensor]:
    """The strategy's own state between rounds as tensors (FedAdam's moments; empty for the others)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(strategy, FedOpt):
        for name in ("m_t", "v_t"):
            for key, value in (getattr(strategy, name) or {}).items():
                out[f"{name}/{key}"] = torch.from_numpy(np.array(value, copy=True))
    return out


def restore_strategy_state(strategy: FedAvg, tensors: dict[str, torch.Tensor]) -> None:
    """Put back what :func:`strategy_state` took (from a checkpoint)."""
    if isinstance(strategy, FedOpt):
        for name in ("m_t", "v_t"):
            prefix = f"{name}/"
            values = {k[len(prefix):]: v.numpy().copy() for k, v in tensors.items() if k.startswith(prefix)}
            setattr(strategy, name, values or None)
