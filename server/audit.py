"""The coordinator's half of the privacy audit (``--audit``): score the canaries with the final model.

Simulation only: the coordinator derives the canaries and the secret inclusion bits from the run's
data and seed, as the simulated owners do (:mod:`fedmodel.privacy.audit`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from fedmodel.config import RunConfig
from fedmodel.data import FederatedSplit
from fedmodel.models import build_model
from fedmodel.privacy.audit import audit_report, audit_scores, canary_scores, run_canaries

log = logging.getLogger("fedmodel.server")


def audit_run(config: RunConfig, split: FederatedSplit, final: Mapping[str, torch.Tensor], *, num_features: int,
              num_classes: int, owner_privacy: Mapping[Any, Mapping[str, float]]) -> dict[str, Any]:
    """``privacy.audit`` of the report: the lower bound beside the audited owners' proven epsilon.

    The proven epsilon compared is the largest of the audited owners' (each canary is protected by
    its own owner's guarantee, so the largest holds for every canary).
    """
    owners = list(config.audited_owners)
    canaries = run_canaries(config, split)
    initial = build_model(config.model, num_features, num_classes, seed=config.seed)
    model = build_model(config.model, num_features, num_classes, seed=config.seed)
    model.load_state_dict(dict(final))
    proven = {o: float(owner_privacy[o]["epsilon"]) for o in owners if o in owner_privacy and config.dp}
    try:
        result = audit_scores(canary_scores(initial, model, canaries), canaries.included, delta=config.delta)
    except ValueError as exc:  # a diverged model: nothing to score
        log.warning("privacy audit not computed: %s", exc)
        return {"owners": owners, "canaries": len(canaries), "verdict": f"not computed: {exc}"}
    report = audit_report(result, proven_epsilon=max(proven.values()) if proven else None, dp=config.dp,
                          owners=owners)
    report["proven_epsilon_owners"] = [{"owner": o, "epsilon": e} for o, e in sorted(proven.items())]
    log.info("privacy audit: lower bound %.3f, proven %s: %s", result.lower_bound, report["proven_epsilon"],
             report["verdict"])
    return report
