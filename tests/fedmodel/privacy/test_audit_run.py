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
from fedmodel.privacy.audit import (
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
