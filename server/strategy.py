"""Strategy choice: Flower's own strategies, inside the wrapper that screens replies and records them.

``strategy`` picks FedAvg, FedProx or FedAdam; with FedAvg, ``aggregation`` may swap the weighted
mean for one of Flower's robust aggregators (FedMedian, FedTrimmedAvg, Krum, MultiKrum). Whatever
aggregates, it sits inside :class:`~fedmodel.server.screening.ScreenedStrategy`: every train reply is
screened first (:func:`fedmodel.server.validation.validate_update` against the arrays sent that round); a
rejected reply becomes an error reply, so the recorder reports it as that owner's failure with the
reason and it never reaches the global model. With ``central-dp`` the screened strategy sits inside
Flower's DP wrapper (:mod:`fedmodel.server.central_dp`).

Dropouts: each round samples every connected node. The first round of a run (or the
scaling-statistics query before it, ``fedmodel.server.stats``) waits for all ``clients`` nodes, at most
``round-timeout`` seconds; later rounds take the nodes connected then (a node that dropped out
joins the next round after it is back), waiting only while fewer than ``min-clients`` are
connected (without a time-out, and when ``min-clients`` is not set: for all of them, as Flower
does). A round needs ``min-clients`` valid replies (1 when not set) to aggregate;
fewer raise :class:`~fedmodel.errors.BelowMinimumError` before anything is aggregated. Flower's own
sampling would wait forever for a node that died (shared/facts/flower-deployment.md, section 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from fedmodel.server.central_dp import CentralAdaptive, CentralFixed
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.screening import DEFAULT_MAX_EXAMPLES, ScreenedStrategy
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from fedmodel.config import RunConfig
from fedmodel.owners import owner_order as _owner_order  # the one owner ordering, as the recorder's
from fedmodel.server import central_dp

RunStrategy = ScreenedStrategy | CentralFixed | CentralAdaptive
"""What :func:`build_strategy` returns: the screened strategy, possibly inside a central-DP wrapper."""


class SizedMultiKrum(MultiKrum):
    """MultiKrum: the weighted mean of the n - F updates with the best Krum scores, n = the round's valid replies."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's MultiKrum, selecting n - F (at least 1) of the n valid replies."""
        replies = list(replies)
        valid = sum(not msg.has_error() for msg in replies)
        self.num_nodes_to_select = max(1, valid - self.num_malicious_nodes)
        return super().aggregate_train(server_round, replies)


def build_strategy(config: RunConfig, recorder: RunRecorder, *, max_examples: int | None = None) -> RunStrategy:
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
        strategy = central_dp.inner_strategy(config, common)
    elif config.strategy == "fedprox":
        strategy = FedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedadam":
        strategy = FedAdam(eta=config.server_lr, eta_l=config.lr, **common)
    elif agg.kind == "median":
        strategy = FedMedian(**common)
    elif agg.kind == "trimmed-mean":
        strategy = FedTrimmedAvg(beta=agg.beta, **common)  # type: ignore[arg-type]  # AggregationSpec.parse sets beta for trimmed-mean
    elif agg.kind == "krum":
        strategy = Krum(num_malicious_nodes=agg.byzantine, **common)  # type: ignore[arg-type]  # AggregationSpec.parse sets byzantine for krum
    elif agg.kind == "multikrum":
        strategy = SizedMultiKrum(num_malicious_nodes=agg.byzantine, **common)  # type: ignore[arg-type]  # AggregationSpec.parse sets byzantine for multikrum
    else:
        strategy = FedAvg(**common)
    checks = [central_dp.clipped_update_check(needs_norm_bit=config.central_dp == "adaptive")] \
        if config.central_dp != "none" else []
    screened = ScreenedStrategy(
        strategy, recorder=recorder, owner_order=_owner_order,
        max_update_norm=config.max_update_norm if config.max_update_norm > 0 else None,
        max_examples=DEFAULT_MAX_EXAMPLES if max_examples is None else max_examples,
        expected_nodes=config.flower_nodes, min_connected=config.min_connected, min_replies=config.min_replies,
        round_timeout=config.round_timeout or None, checks=checks,
    )
    if config.central_dp != "none":
        return central_dp.wrap(screened, config)
    return screened


def aggregator(strategy: Strategy) -> Strategy:
    """The Flower strategy that aggregates, inside fedmodel's wrappers (FedAdam keeps its moments there)."""
    while isinstance(strategy, (ScreenedStrategy, CentralFixed, CentralAdaptive)):
        strategy = strategy.strategy
    return strategy




def _mean_train_loss(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Aggregate only what means something averaged: the example-weighted train loss."""
    total, weight = 0.0, 0.0
    for record in records:
        m = next(iter(record.metric_records.values()))
        loss, n = float(m["train-loss"]), float(m[weight_key])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        if loss == loss:  # skip NaN (an owner with only empty batches)
            total, weight = total + loss * n, weight + n
    return MetricRecord({"train-loss": total / weight if weight else float("nan")})


def _mean_eval(records: list[RecordDict], weight_key: str) -> MetricRecord:
    total: dict[str, float] = {}
    weight = 0.0
    for record in records:
        m = next(iter(record.metric_records.values()))
        n = float(m[weight_key])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        weight += n
        for key in ("loss", "accuracy"):
            total[key] = total.get(key, 0.0) + float(m[key]) * n  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
    return MetricRecord({k: v / weight for k, v in total.items()} if weight else {})


def strategy_state(strategy: Strategy) -> dict[str, torch.Tensor]:
    """The strategy's own state between rounds as tensors (FedAdam's moments; empty for the others)."""
    out: dict[str, torch.Tensor] = {}
    strategy = aggregator(strategy)
    if isinstance(strategy, FedOpt):
        for name in ("m_t", "v_t"):
            for key, value in (getattr(strategy, name) or {}).items():
                out[f"{name}/{key}"] = torch.from_numpy(np.array(value, copy=True))
    return out


def restore_strategy_state(strategy: Strategy, tensors: dict[str, torch.Tensor]) -> None:
    """Put back what :func:`strategy_state` took (from a checkpoint)."""
    strategy = aggregator(strategy)
    if isinstance(strategy, FedOpt):
        for name in ("m_t", "v_t"):
            prefix = f"{name}/"
            values = {k[len(prefix):]: v.numpy().copy() for k, v in tensors.items() if k.startswith(prefix)}
            setattr(strategy, name, values or None)
