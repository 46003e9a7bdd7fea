"""Strategy choice: Flower's own FedAvg, FedProx and FedAdam, with the run recorder mixed in."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedmodel.config import RunConfig
from server.recorder import RunRecorder


class RecordingMixin:
    """Reports every round's replies to a :class:`RunRecorder` before the strategy aggregates them.

    Mixed in front of any Message-API strategy, so aggregation itself stays Flower's.
    """

    recorder: RunRecorder

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.recorder.round_started(server_round)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.recorder.train_replies(server_round, replies)
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self.recorder.evaluate_replies(server_round, replies)
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]


class RecordingFedAvg(RecordingMixin, FedAvg):
    """FedAvg that reports to the run recorder."""


class RecordingFedProx(RecordingMixin, FedProx):
    """FedProx that reports to the run recorder."""


class RecordingFedAdam(RecordingMixin, FedAdam):
    """FedAdam that reports to the run recorder."""


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


def build_strategy(config: RunConfig, recorder: RunRecorder) -> FedAvg:
    """The strategy the config names, expecting every one of ``config.clients`` owners each round."""
    common: dict[str, Any] = {
        "fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": config.clients,
        "min_evaluate_nodes": config.clients, "min_available_nodes": config.clients,
        "train_metrics_aggr_fn": _mean_train_loss, "evaluate_metrics_aggr_fn": _mean_eval,
    }
    strategy: FedAvg
    if config.strategy == "fedprox":
        strategy = RecordingFedProx(proximal_mu=config.proximal_mu, **common)
    elif config.strategy == "fedadam":
        strategy = RecordingFedAdam(eta=config.server_lr, eta_l=config.lr, **common)
    else:
        strategy = RecordingFedAvg(**common)
    strategy.recorder = recorder  # type: ignore[attr-defined]
    return strategy
