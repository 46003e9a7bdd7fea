"""The coordinator's half of the privacy audit (``--audit``): score the canaries, decide the bound.

Two readings, each at half the significance level (Bonferroni), the larger bound reported:

* the final global model: each canary's gain from the initial to the final global model;
* each audited owner's own updates, which the coordinator receives: each canary's gain summed over
  its owner's replies, from the global model the owner was sent to the model it sent back. No other
  owner's noise enters this score, so a single owner that trains without noise among honest ones
  shows here, while the global model hides it. Both are post-processing of what the owner's DP
  guarantee covers (its updates), so both bounds are valid. Not with secure aggregation (the
  coordinator sees only the sum) nor when no update was seen.

Simulation only: the coordinator derives the canaries and the secret inclusion bits from the run's
data and seed, as the simulated owners do (:mod:`fedmodel.privacy.canaries`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fedmodel.config import RunConfig
from fedmodel.data import FederatedSplit
from fedmodel.models import build_model
from fedmodel.privacy.canaries import BETA, Canaries, audit_report, audit_scores, canary_scores, run_canaries

log = logging.getLogger("fedmodel.server")


class UpdateAudit:
    """Scores each audited owner's canaries on that owner's own updates, round by round."""

    def __init__(self, config: RunConfig, split: FederatedSplit, *, num_features: int, num_classes: int) -> None:
        self.config = config
        self.canaries: Canaries = run_canaries(config, split)
        self.scores = np.zeros(len(self.canaries))
        self.updates = 0
        self._before = build_model(config.model, num_features, num_classes)
        self._after = build_model(config.model, num_features, num_classes)

    def observe(self, messages: list[Message], replies: list[Message]) -> None:
        """Add the gains of one round's replies (``fedmodel.server.recorder.RunRecorder.train_sent`` calls it)."""
        from fedmodel.server.recorder import owner_of

        sent = {m.metadata.message_id: m for m in messages}
        for reply in replies:
            source = sent.get(reply.metadata.reply_to_message_id)
            if reply.has_error() or source is None or not reply.content.array_records:
                continue
            try:
                owner = owner_of(reply)
                self._before.load_state_dict(_arrays(source))
                self._after.load_state_dict(_arrays(reply))
            except Exception:  # a malformed reply is the strategy's to reject, not the audit's to score
                continue
            mine = self.canaries.owner == owner
            if not mine.any():
                continue
            gains = canary_scores(self._before, self._after, self.canaries)
            if np.all(np.isfinite(gains[mine])):
                self.scores[mine] += gains[mine]
                self.updates += 1


def _arrays(message: Message) -> dict[str, torch.Tensor]:
    return next(iter(message.content.array_records.values())).to_torch_state_dict()


def audit_run(config: RunConfig, split: FederatedSplit, final: Mapping[str, torch.Tensor], *, num_features: int,
              num_classes: int, owner_privacy: Mapping[Any, Mapping[str, float]],
              updates: UpdateAudit | None = None) -> dict[str, Any]:
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
    readings: dict[str, np.ndarray] = {"final global model": canary_scores(initial, model, canaries)}
    if updates is not None and updates.updates:
        readings["the audited owners' own updates"] = updates.scores
    results = {}
    for name, scores in readings.items():
        try:
            results[name] = audit_scores(scores, canaries.included, delta=config.delta, beta=BETA / 2)
        except ValueError as exc:  # a diverged model: nothing to score
            log.warning("privacy audit (%s) not computed: %s", name, exc)
    if not results:
        return {"owners": owners, "canaries": len(canaries), "verdict": "not computed: the model diverged"}
    read_from, result = max(results.items(), key=lambda item: item[1].lower_bound)
    report = audit_report(result, proven_epsilon=max(proven.values()) if proven else None, dp=config.dp,
                          owners=owners)
    report["beta"] = BETA
    report["read_from"] = read_from
    report["lower_bounds"] = [{"read_from": n, "lower_bound_epsilon": r.lower_bound, "guesses": r.guesses,
                               "correct": r.correct, "beta": r.beta} for n, r in results.items()]
    report["proven_epsilon_owners"] = [{"owner": o, "epsilon": e} for o, e in sorted(proven.items())]
    log.info("privacy audit: lower bound %.3f (%s), proven %s: %s", result.lower_bound, read_from,
             report["proven_epsilon"], report["verdict"])
    return report
