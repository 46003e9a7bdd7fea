"""Federated scaling statistics before round 1: ask every owner for DP sums, combine them.

The query carries public bounds and the noise multiplier; each owner charges the release to its
privacy state before answering (see ``fedmodel.clients.app.query``). It is sent like a round: to the nodes
:meth:`fedmodel.server.screening.ScreenedStrategy.connected_nodes` chooses (every node, waiting at most
``round-timeout``), waiting at most ``round-timeout`` for the answers, and it needs ``min-clients``
of them (1 when not set), else BelowMinimumError names who failed or timed out, and the query is
tried again or the run stops, by ``below-minimum`` (:func:`fedmodel.server.rounds.with_retries`). Owners
that fail or time out are recorded and left out; the statistics come from the rest.
"""

from __future__ import annotations

import numpy as np
from fedmodel.server.recorder import owner_of
from fedmodel.server.rounds import with_retries
from fedmodel.server.strategy import RunStrategy
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedmodel.config import RunConfig
from fedmodel.data.prepare import bounds_to_config
from fedmodel.data.scaling import FederatedStats, ScalingBounds, combine
from fedmodel.data.schema import Schema
from fedmodel.errors import BelowMinimumError
from fedmodel.protocol import FEATURE_SUMS_QUERY

WHAT = "scaling statistics"


def collect_feature_stats(grid: Grid, config: RunConfig, bounds: ScalingBounds, schema: Schema,
                          strategy: RunStrategy) -> FederatedStats:
    """Send the feature-sums query to every connected owner and combine the noisy sums that come back.

    ``strategy`` (one of :func:`fedmodel.server.strategy.build_strategy`'s) chooses the nodes and holds the
    recorder. Raises BelowMinimumError when fewer than ``min-clients`` owners answer.
    """
    return with_retries(config, strategy.recorder.folder, WHAT,
                        lambda: _query(grid, config, bounds, schema, strategy), server_round=0)


def _query(grid: Grid, config: RunConfig, bounds: ScalingBounds, schema: Schema,
           strategy: RunStrategy) -> FederatedStats:
    nodes = strategy.connected_nodes(grid, 0, WHAT)
    noise = config.scaling_noise if config.dp else 0.0
    record = ConfigRecord({"query": FEATURE_SUMS_QUERY, "scaling-noise": noise, **bounds_to_config(bounds),
                           **schema.to_config()})
    messages = [Message(content=RecordDict({"config": record}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    timeout = config.round_timeout or None
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    answered = {r.metadata.reply_to_message_id for r in replies}
    late = "no answer" + (f" within round-timeout ({timeout:g} s)" if timeout else "")
    d = len(bounds.lo)
    releases: list[np.ndarray] = []
    owners: dict[int | str, float] = {}
    failures: list[dict[str, object]] = [{"node_id": int(m.metadata.dst_node_id), "reason": late}
                                         for m in messages if m.metadata.message_id not in answered]
    for reply in replies:
        if reply.has_error():
            failures.append({"node_id": int(reply.metadata.src_node_id), "reason": reply.error.reason})
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        releases.append(np.asarray(metrics["sums"], dtype=np.float64).reshape(3, d))
        owners[owner_of(reply)] = float(metrics.get("epsilon-stats", 0.0))  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
    if len(releases) < strategy.min_replies:
        missing = "; ".join(f"node {f['node_id']}: {str(f['reason']).splitlines()[0]}" for f in failures)
        raise BelowMinimumError(f"{WHAT}: {len(releases)} of {len(messages)} owners answered, min-clients needs "
                                f"{strategy.min_replies}: {missing or 'no owner was asked'}")
    stats = combine(releases, bounds, max(noise, 1e-12))
    strategy.recorder.scaling_statistics(stats, bounds, owners, failures)
    return stats
