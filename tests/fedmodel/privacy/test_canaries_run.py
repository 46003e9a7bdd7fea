"""The whole privacy audit in process: a correct DP run passes it, a run without noise fails it.

Two simulated owners train the logistic regression on digits with DP-SGD (fedmodel.owner, the
ClientApp's own training code) and FedAvg, in this process without Flower; every canary goes to
them. The broken run is the ``no-noise`` fault (noise multiplier 0, the planned epsilon still
reported).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.models import build_model
from fedmodel.owner import train_owner_round
from fedmodel.privacy import OwnerPrivacyState
from fedmodel.privacy.canaries import (
    AuditResult,
    audit_report,
    audit_scores,
    canary_scores,
    run_canaries,
    shard_with_canaries,
)

CLAIMED = 0.5


def _audit(config: RunConfig) -> tuple[AuditResult, float]:
    """Train in process with FedAvg; the audit's result and the largest epsilon an owner reported."""
    torch.set_num_threads(1)
    split = federated_split(config)
    shards = [shard_with_canaries(config, i, True, split.owner(i)) for i in range(config.clients)]
    features, classes = shards[0].num_features, shards[0].num_classes
    weights = build_model(config.model, features, classes, seed=config.seed).state_dict()
    states = [OwnerPrivacyState() for _ in shards]
    epsilon = 0.0
    for server_round in range(1, config.rounds + 1):
        updates = [train_owner_round(config, i, shard, weights, privacy=states[i], server_round=server_round,
                                     proximal_mu=0.0, device=torch.device("cpu")) for i, shard in enumerate(shards)]
        total = sum(len(s) for s in shards)
        weights = {k: sum(len(s) * u.weights[k] for s, u in zip(shards, updates, strict=True)) / total
                   for k in weights}
        epsilon = max(epsilon, *(u.metrics["epsilon"] for u in updates))
    final = build_model(config.model, features, classes, seed=config.seed)
    final.load_state_dict(weights)
    canaries = run_canaries(config, split)
    scores = canary_scores(build_model(config.model, features, classes, seed=config.seed), final, canaries)
    return audit_scores(scores, canaries.included, delta=config.delta), epsilon


def _config(**extra: object) -> RunConfig:
    return RunConfig.from_mapping({"clients": 2, "rounds": 3, "local-epochs": 5, "epsilon": CLAIMED,
                                   "audit": True, "audit-canaries": 200, **extra})


@pytest.mark.slow
def test_correct_run_stays_below_its_proven_epsilon() -> None:
    result, proven = _audit(_config())
    assert proven == pytest.approx(CLAIMED, rel=0.02)
    assert result.lower_bound <= proven
    assert audit_report(result, proven_epsilon=proven, dp=True, owners=[0, 1])["verdict"] == "consistent"


@pytest.mark.slow
def test_run_without_noise_is_flagged_far_above_its_claim() -> None:
    result, claimed = _audit(_config(**{"inject-faults": "0:no-noise,1:no-noise"}))
    assert claimed == pytest.approx(CLAIMED, rel=0.02)  # the broken owners still claim the planned epsilon
    assert result.lower_bound > 3 * claimed, result
    assert audit_report(result, proven_epsilon=claimed, dp=True, owners=[0, 1])["verdict"].startswith("VIOLATION")
    assert np.isfinite(result.lower_bound)


def _federate_through_the_client_app(config: RunConfig) -> dict[str, object]:
    """The real ClientApp in process (canaries, accounting, faults), FedAvg here; the coordinator's audit."""
    import time

    import fedmodel.clients.app as client_app
    from fedmodel.server.canaries import UpdateAudit, audit_run
    from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, Metadata, RecordDict
    from flwr.app.message.message import make_message

    split = federated_split(config)
    test = split.test()
    weights = build_model(config.model, test.num_features, test.num_classes, seed=config.seed).state_dict()
    contexts = [Context(run_id=1, node_id=100 + o, state=RecordDict(), run_config=config.to_mapping(),
                        node_config={"partition-id": o, "num-partitions": config.clients})
                for o in range(config.clients)]
    updates = UpdateAudit(config, split, num_features=test.num_features, num_classes=test.num_classes)
    privacy: dict[object, dict[str, float]] = {}
    for server_round in range(1, config.rounds + 1):
        messages = [make_message(metadata=Metadata(
            run_id=1, message_id=f"r{server_round}o{o}", src_node_id=0, dst_node_id=100 + o, reply_to_message_id="",
            group_id=str(server_round), created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN),
            content=RecordDict({"arrays": ArrayRecord(weights),
                                "config": ConfigRecord({"server-round": server_round})}))
            for o in range(config.clients)]
        replies = [client_app.train(m, contexts[o]) for o, m in enumerate(messages)]
        assert not any(r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
        updates.observe(messages, replies)
        metrics = [dict(r.content["metrics"]) for r in replies]
        total = sum(float(m["num-examples"]) for m in metrics)
        states = [r.content["arrays"].to_torch_state_dict() for r in replies]
        weights = {k: sum(float(m["num-examples"]) * s[k] for m, s in zip(metrics, states, strict=True)) / total
                   for k in weights}
        privacy = {int(m["owner"]): {k: float(v) for k, v in m.items()} for m in metrics}  # type: ignore[arg-type]
    return audit_run(config, split, weights, num_features=test.num_features, num_classes=test.num_classes,
                     owner_privacy=privacy, updates=updates)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["", "0:no-noise"], ids=["honest", "owner-0-no-noise"])
def test_one_broken_owner_among_honest_ones_shows_in_its_own_updates(fault: str) -> None:
    """Owner 0 of 4 audited alone: the global model hides its missing noise, its own updates do not."""
    config = RunConfig.from_mapping({"clients": 4, "rounds": 3, "local-epochs": 5, "epsilon": CLAIMED, "audit": True,
                                     "audit-canaries": 200, "audit-owners": "0", "inject-faults": fault})
    audit = _federate_through_the_client_app(config)
    bounds = {b["read_from"]: b["lower_bound_epsilon"] for b in audit["lower_bounds"]}  # type: ignore[attr-defined]
    assert audit["proven_epsilon"] == pytest.approx(CLAIMED, rel=0.02)
    if not fault:
        assert audit["verdict"] == "consistent" and max(bounds.values()) <= CLAIMED, audit
    else:
        assert audit["verdict"].startswith("VIOLATION"), audit  # type: ignore[attr-defined]
        assert bounds["the audited owners' own updates"] > 3 * CLAIMED, audit
        assert audit["read_from"] == "the audited owners' own updates"
