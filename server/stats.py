"""Federated scaling statistics before round 1: ask every owner for DP sums, combine them.

The query carries public bounds and the noise multiplier; each owner charges the release to its
privacy state before answering (see ``clients.app.query``). Owners that fail are recorded and left
out; the statistics come from the rest.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from fedmodel.config import RunConfig
from fedmodel.data.scaling import FederatedStats, ScalingBounds, combine
from fedmodel.data.prepare import bounds_to_config
from fedmodel.data.schema import Schema
from fedmodel.protocol import FEATURE_SUMS_QUERY
from server.recorder import RunRecorder, owner_of


def collect_feature_stats(grid: Grid, config: RunConfig, bounds: ScalingBounds, schema: Schema,
                          recorder: RunRecorder) -> FederatedStats:
    """Send the feature-sums query to every owner and combine the noisy sums that come back."""
    nodes, _ = sample_nodes(grid, config.clients, config.clients)
    noise = config.scaling_noise if config.dp else 0.0
    record = ConfigRecord({"query": FEATURE_SUMS_QUERY, "scaling-noise": noise, **bounds_to_config(bounds),
                           **schema.to_config()})
    messages = [Message(content=RecordDict({"config": record}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    d = len(bounds.lo)
    releases: list[np.ndarray] = []
    owners: dict[int | str, float] = {}
    failures: list[dict[str, object]] = []
    for reply in grid.send_and_receive(messages):
        if reply.has_error():
            failures.append({"node_id": int(reply.metadata.src_node_id), "reason": reply.error.reason})
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        releases.append(np.asarray(metrics["sums"], dtype=np.float64).reshape(3, d))
        owners[owner_of(reply)] = float(metrics.get("epsilon-stats", 0.0))  # type: ignore[arg-type]
    stats = combine(releases, bounds, max(noise, 1e-12))
    recorder.scaling_statistics(stats, bounds, owners, failures)
    return stats
