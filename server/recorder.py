"""Turns the strategy's rounds into the run folder: per-round rows, per-owner privacy, failures, dropouts.

Per round the report names the owners that replied, that failed (with the reason they or the
coordinator gave), that were sent the round but did not answer before ``round-timeout``
(``timed_out``) and, of the owners heard from before, those whose node was not connected
(``not_connected``). A node is named by the owner it last answered for; one never heard from is
``node <id>``. :meth:`RunRecorder.state` and :meth:`RunRecorder.restore` carry all of it through a
checkpoint. In a deployment the owner is the coordinator's registry name of the replying node
(:mod:`fedmodel.server.identity`); a reply that claimed another name is listed in ``identity.claims`` and
flagged with ``claimed_name`` on the owner's entries.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedmodel.config import RunConfig
from fedmodel.errors import AllClientsFailedError, refusal_rule
from fedmodel.owners import OwnerId, owner_in_reason, owner_order, sorted_owners
from fedmodel.privacy import ACCOUNTANT
from fedmodel.privacy.central import summary as central_summary
from fedmodel.privacy.release import EVALUATION_LOSS_CLIP
from fedmodel.protocol import (
    AUDIT_HEAD_RECORD_KEY,
    OWNER_RECORD_KEY,
    PLACEMENT_RECORD_KEY,
    PRIVACY_REPLY_KEY,
    QUALITY_RECORD_KEY,
)
from fedmodel.report.model import (
    Attempt,
    AuditHead,
    DataQuality,
    Failure,
    Identity,
    IdentityClaim,
    Metrics,
    OwnerPrivacy,
    OwnerQuality,
    OwnerResult,
    Privacy,
    Refusal,
    Report,
    Resources,
    Round,
    Timing,
    UnfinishedRound,
)
from fedmodel.report.run_folder import RunFolder
from fedmodel.security.audit_log import AuditLog

log = logging.getLogger("fedmodel.server")
R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)


@dataclass
class _Round:
    number: int
    started: float
    train: list[dict[str, Any]] = field(default_factory=list)
    evaluate: list[dict[str, float]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    timed_out: list[OwnerId] = field(default_factory=list)
    not_connected: list[OwnerId] = field(default_factory=list)
    destination: dict[str, int] = field(default_factory=dict)  # train message id -> node id
    attempt: int = 1
    earlier: list[Attempt] = field(default_factory=list)  # attempts retried (below-minimum = retry)

    def participation(self) -> Attempt:
        """Who replied, failed, timed out and was not connected in this attempt."""
        return Attempt(attempt=self.attempt, replied=sorted_owners(m["owner"] for m in self.train),
                       failures=self.failures, timed_out=self.timed_out, not_connected=self.not_connected)


class RunRecorder:
    """Collects what each round produced and writes it to the run folder as it goes."""

    def __init__(self, config: RunConfig, folder: RunFolder, *, audit: AuditLog | None = None) -> None:
        self.config = config
        self.folder = folder
        self.audit = audit
        self.refusals: list[Refusal] = []
        self.started = time.time()
        self.initial: Metrics | None = None
        self.rounds: list[Round] = []
        self.owner_privacy: dict[OwnerId, dict[str, float]] = {}
        self.owner_eval: dict[OwnerId, dict[str, float]] = {}
        self.owner_train: dict[OwnerId, dict[str, float]] = {}
        self.owner_node: dict[OwnerId, str] = {}
        self.ray_nodes: set[str] = set()
        self.owner_quality: dict[OwnerId, dict[str, int]] = {}
        self.scaling: dict[str, Any] | None = None
        self.owner_state: dict[OwnerId, tuple[int, dict[str, Any]]] = {}  # owner -> (round, privacy state) reported
        self.node_owner: dict[int, OwnerId] = {}
        self.resumes: list[dict[str, Any]] = []
        self.privacy_audit: dict[str, Any] | None = None  # --audit's outcome (fedmodel.server.canaries), set after the last round
        self.update_audit: Any = None  # --audit: fedmodel.server.canaries.UpdateAudit, shown every round's train replies
        self.central: dict[str, Any] | None = None  # central DP's releases (fedmodel.server.central_dp)
        self._seconds_before = 0.0  # ServerApp time spent before the latest resume
        self._round: _Round | None = None
        self.identity_source: str | None = None  # where owners' names come from, when not from the replies
        self.identity_claims: list[IdentityClaim] = []  # replies that claimed a name other than their node's
        self.audit_heads: dict[OwnerId, list[AuditHead]] = {}  # each deployed owner's audit-log head per reply

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The finished rounds as report.json writes them (and the checkpoint keeps them)."""
        return [r.to_dict() for r in self.rounds]

    # ------------------------------------------------------------------ strategy hooks
    def round_started(self, server_round: int) -> None:
        previous = self._round
        self._round = _Round(server_round, time.time())
        if previous is not None and previous.number == server_round:  # a retry of the same round
            self._round.attempt = previous.attempt + 1
            self._round.earlier = previous.earlier + [previous.participation()]
        self.folder.event("round-start", round=server_round, rounds=self.config.rounds, attempt=self._round.attempt)

    def train_sent(self, server_round: int, messages: Iterable[Message], replies: Iterable[Message]) -> None:
        """The round's train messages after sending: who was asked, and who did not answer in time."""
        rnd = self._current(server_round)
        rnd.destination = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in messages}
        answered = {r.metadata.reply_to_message_id for r in replies}
        rnd.timed_out = sorted_owners(self._name(node) for mid, node in rnd.destination.items() if mid not in answered)
        asked = {self._name(node) for node in rnd.destination.values()}
        rnd.not_connected = sorted_owners({o for o in self.node_owner.values() if o not in asked})
        if rnd.timed_out:
            self.folder.event("timed-out", round=server_round, owners=rnd.timed_out)
        if self.update_audit is not None:
            self.update_audit.observe(list(messages), list(replies))

    def train_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Record replies (metrics and failures); raise if every sampled owner failed."""
        rnd = self._current(server_round)
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                node = rnd.destination.get(msg.metadata.reply_to_message_id, int(msg.metadata.src_node_id))
                owner = owner_in_reason(msg.error.reason)  # type: ignore[arg-type]  # an error reply always carries its reason; the owner of a cohort's node that failed: only its text says
                rnd.failures.append(Failure(node_id=node, reason=msg.error.reason,  # type: ignore[arg-type]  # an error reply always carries its reason
                                            owner=owner if owner is not None else self.node_owner.get(node)))
            else:
                owner = owner_of(msg)
                self.node_owner[int(msg.metadata.src_node_id)] = owner
                metrics = {k: float(v) for k, v in _metrics(msg).items()}
                rnd.train.append({**metrics, "owner": owner})
                self._keep_state(server_round, owner, msg)
                self.owner_train[owner] = metrics
                quality = config_record(msg, QUALITY_RECORD_KEY)
                if quality is not None:  # counts only: anything else in the record is ignored
                    self.owner_quality[owner] = {str(k): int(v) for k, v in quality.items()
                                                 if isinstance(v, int) and not isinstance(v, bool)}
                node = ray_node_of(msg)  # type: ignore[assignment]  # owner ids are int or str
                if node is not None:
                    self.owner_node[owner] = node  # type: ignore[assignment]  # owner ids are int or str
                    self.ray_nodes.add(node)  # type: ignore[arg-type]  # owner ids are int or str
                if "epsilon" in metrics:
                    self.owner_privacy[owner] = metrics
        self._refusals(server_round, rnd.failures)
        self._audit_heads(server_round, "train", replies)
        if self.audit is not None:
            self.audit.append("train-replies", round=server_round, replies=[
                {"owner": m["owner"], **{k: m[k] for k in ("num-examples", "epsilon", "ledger-epsilon") if k in m}}
                for m in rnd.train], failures=[{"owner": f.owner, "reason": f.reason} for f in rnd.failures])
        if replies and not rnd.train:
            reasons = "; ".join(sorted({f.first_line for f in rnd.failures}))
            raise AllClientsFailedError(
                f"round {server_round}: all {len(replies)} owners failed, nothing to aggregate: {reasons}"
            )
        if not replies:
            raise AllClientsFailedError(f"round {server_round}: no owner replied")
        return replies

    def shortfall(self, server_round: int) -> str:
        """Who is missing from a round, for the reason a round stops: failures (first line) and time-outs."""
        rnd = self._current(server_round)
        parts = [f"owner {f.owner if f.owner is not None else 'node ' + str(f.node_id)} failed ({f.first_line})"
                 for f in rnd.failures]
        parts += [f"{o if isinstance(o, str) and o.startswith('node ') else 'owner ' + str(o)} timed out"
                  for o in rnd.timed_out]
        return "; ".join(parts) if parts else "no other owner was sent the round"

    def rejected_reply(self, msg: Message) -> None:
        """A train reply rejected before aggregation: its owner trained, so its privacy and counts are kept."""
        try:
            owner = owner_of(msg)
            metrics = {k: float(v) for k, v in _metrics(msg).items() if isinstance(v, (int, float))}
        except Exception:  # a reply too malformed to name its owner or its numbers
            return
        needed = ("epsilon", "budget-epsilon", "noise-multiplier", "sample-rate", "steps", "max-grad-norm", "delta",
                  "num-examples")
        if all(k in metrics for k in needed):
            self.owner_privacy[owner] = metrics
        if self._round is not None:
            self._keep_state(self._round.number, owner, msg)
        quality = config_record(msg, QUALITY_RECORD_KEY)
        if quality is not None:
            self.owner_quality[owner] = {str(k): int(v) for k, v in quality.items()
                                         if isinstance(v, int) and not isinstance(v, bool)}

    def evaluate_replies(self, server_round: int, replies: Iterable[Message]) -> None:
        rnd = self._current(server_round)
        failures = []
        for msg in replies:
            if not msg.has_error():
                metrics = {k: float(v) for k, v in _metrics(msg).items()}
                rnd.evaluate.append(metrics)
                self.owner_eval[owner_of(msg)] = metrics
                self.node_owner[int(msg.metadata.src_node_id)] = owner_of(msg)
            else:
                failures.append(Failure(owner=owner_in_reason(msg.error.reason), reason=msg.error.reason))  # type: ignore[arg-type]  # an error reply always carries its reason
        self._refusals(server_round, failures)  # an owner's evaluation budget or policy refusal
        self._audit_heads(server_round, "evaluate", replies)
        if self.audit is not None:
            self.audit.append("evaluate-replies", round=server_round, replies=len(rnd.evaluate),
                              failures=[f.to_dict() for f in failures])

    def _audit_heads(self, server_round: int, kind: str, replies: Iterable[Message]) -> None:
        """Keep each deployed owner's audit-log head (count, tip) from its replies, in the audit log and report.

        This copy is out of the node's reach: a node log later cut back below a count kept here shows it.
        A count lower than one this run saw before is flagged at once (``node-audit-rollback``).
        """
        heads = []
        for msg in replies:
            record = None if msg.has_error() else config_record(msg, AUDIT_HEAD_RECORD_KEY)
            if record is None:
                continue
            count, tip = record.get("count"), record.get("tip")
            if not isinstance(count, int) or isinstance(count, bool) or not isinstance(tip, str):
                continue
            owner = owner_of(msg)
            head = AuditHead(round=server_round, kind=kind, owner=owner, count=count, tip=tip[:64],
                             keyed=bool(record.get("keyed", False)))
            seen = [h.count for h in self.audit_heads.get(owner, [])]
            if seen and count < max(seen):
                head.rolled_back_from = max(seen)
                self.folder.event("node-audit-rollback", round=server_round, owner=owner, count=count,
                                  before=max(seen))
            self.audit_heads.setdefault(owner, []).append(head)
            heads.append(head)
        if heads and self.audit is not None:
            self.audit.append("node-audit-heads", round=server_round, kind=kind, heads=[h.to_dict() for h in heads])

    def _refusals(self, server_round: int, failures: list[Failure]) -> None:
        """Failures that are an owner's refusal (its budget, its policy), for the report's privacy section."""
        for f in failures:
            rule = refusal_rule(f.reason)
            if rule is not None:
                self.refusals.append(Refusal(round=server_round, owner=f.owner, rule=rule, reason=f.reason))

    def scaling_statistics(self, stats: Any, bounds: Any, owners: dict[OwnerId, float],
                           failures: list[dict[str, Any]]) -> None:
        """The federated scaling statistics: per-feature values, their noise tolerance, each owner's epsilon."""
        self.scaling = {
            "method": self.config.scaling, "statistics": "federated", "owners_answered": stats.owners,
            "noise_multiplier": stats.noise_multiplier if self.config.dp else 0.0,
            "tolerance": "3 standard errors of the noise (first order), per feature",
            "features": [
                {"mean": float(m), "std": float(s), "mean_tolerance": float(3 * ms), "std_tolerance": float(3 * ss),
                 "bounds": [float(lo), float(hi)]}
                for m, s, ms, ss, lo, hi in zip(stats.mean, stats.std, stats.mean_se, stats.std_se, bounds.lo,
                                                bounds.hi, strict=True)
            ],
            "owner_epsilon": [{"owner": o, "epsilon": e} for o, e in sorted(owners.items(), key=lambda i: owner_order(i[0]))],
            "failures": failures,
        }
        self.folder.event("scaling-statistics", owners=stats.owners, failures=len(failures))
        self._refusals(0, [Failure.from_dict(f) for f in failures])
        if self.audit is not None:
            self.audit.append("scaling-statistics", owners_answered=int(stats.owners),
                              owner_epsilon=self.scaling["owner_epsilon"],
                              failures=[{"owner": f.get("owner"), "reason": f.get("reason")} for f in failures])

    def central_evaluation(self, server_round: int, metrics: dict[str, float]) -> None:
        """Server-side test metrics of the global model: closes the round and writes its row."""
        if server_round == 0:
            self.initial = _test_metrics(metrics)
            return
        rnd = self._current(server_round)
        examples = sum(m["num-examples"] for m in rnd.train if _finite(m["train-loss"]))
        train_loss = (sum(m["train-loss"] * m["num-examples"] for m in rnd.train if _finite(m["train-loss"]))
                      / examples) if examples else None
        eps = [m["epsilon"] for m in rnd.train if "epsilon" in m]
        row = Round(
            round=server_round, train_loss=train_loss, test=_test_metrics(metrics), num_replies=len(rnd.train),
            num_failures=len(rnd.failures), seconds=round(time.time() - rnd.started, 3),
            epsilon_max=max(eps) if eps else None, num_timed_out=len(rnd.timed_out),
            participation=rnd.participation(), retried=rnd.earlier,
            owner_epsilon=[(m["owner"], m["epsilon"]) for m in sorted(rnd.train, key=lambda m: owner_order(m["owner"]))
                           if "epsilon" in m],
        )
        self.folder.append_round(row.csv_row())
        self.rounds.append(row)
        self.folder.event("round", **row.csv_row(), attempt=rnd.attempt)
        self._round = None

    def identity_claim(self, node_id: int, owner: str, claimed: str) -> None:
        """A reply from ``node_id`` (registry name ``owner``) claimed to be ``claimed``: flagged, never believed."""
        if any(c.node_id == node_id and c.claimed_name == claimed for c in self.identity_claims):
            return
        server_round = self._round.number if self._round is not None else None
        self.identity_claims.append(IdentityClaim(node_id=node_id, owner=owner, claimed_name=claimed,
                                                  round=server_round))
        log.warning("node %d (%s) replied claiming to be owner %s; reported as %s", node_id, owner, claimed, owner)
        self.folder.event("identity-claim", node_id=node_id, owner=owner, claimed_name=claimed, round=server_round)
        if self.audit is not None:
            self.audit.append("identity-claim", node_id=node_id, owner=owner, claimed_name=claimed,
                              round=server_round, warning=f"reply claimed another owner's name; reported as {owner}")

    def _claimed(self, owner: OwnerId) -> list[str] | None:
        """The other names an owner's node claimed, or None when it claimed none."""
        names = sorted({c.claimed_name for c in self.identity_claims if c.owner == owner})
        return names or None

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        """Everything the report needs from the rounds so far, JSON-compatible (owners keep their type)."""
        def pairs(d: dict[Any, Any]) -> list[list[Any]]:
            return [[k, v] for k, v in d.items()]

        return {
            "initial": self.initial.to_dict() if self.initial else None, "rows": self.rows,
            "owner_privacy": pairs(self.owner_privacy),
            "owner_eval": pairs(self.owner_eval), "owner_train": pairs(self.owner_train),
            "owner_node": pairs(self.owner_node), "ray_nodes": sorted(self.ray_nodes),
            "owner_quality": pairs(self.owner_quality), "scaling": self.scaling,
            "owner_state": [[o, r, s] for o, (r, s) in self.owner_state.items()],
            "node_owner": pairs(self.node_owner), "resumes": self.resumes,
            "refusals": [r.to_dict() for r in self.refusals], "central": self.central,
            "identity_claims": [c.to_dict() for c in self.identity_claims],
            "seconds_before": round(time.time() - self.started, 3) + self._seconds_before,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` (a checkpoint's)."""
        self.initial = Metrics.from_dict(state["initial"])
        self.rounds = [Round.from_dict(r) for r in state["rows"]]
        self.owner_privacy = {o: v for o, v in state["owner_privacy"]}
        self.owner_eval = {o: v for o, v in state["owner_eval"]}
        self.owner_train = {o: v for o, v in state["owner_train"]}
        self.owner_node = {o: v for o, v in state["owner_node"]}
        self.ray_nodes = set(state["ray_nodes"])
        self.owner_quality = {o: v for o, v in state["owner_quality"]}
        self.scaling = state["scaling"]
        self.owner_state = {o: (int(r), s) for o, r, s in state["owner_state"]}
        self.node_owner = {int(n): o for n, o in state["node_owner"]}
        self.resumes = list(state["resumes"])
        self.refusals = [Refusal.from_dict(r) for r in state.get("refusals", [])]
        self.central = state.get("central")
        self.identity_claims = [IdentityClaim.from_dict(c) for c in state.get("identity_claims", [])]
        self._seconds_before = float(state.get("seconds_before", 0.0))

    def _keep_state(self, server_round: int, owner: OwnerId, msg: Message) -> None:
        record = config_record(msg, PRIVACY_REPLY_KEY)
        if record is not None:
            self.owner_state[owner] = (server_round, {str(k): v for k, v in record.items()})

    def _name(self, node: int) -> OwnerId:
        owner = self.node_owner.get(node)
        return owner if owner is not None else f"node {node}"

    # ------------------------------------------------------------------ report
    def report(self, status: str, reason: str | None = None) -> dict[str, Any]:
        """The report.json content (NaN written as null): :meth:`build_report`'s, as the file holds it."""
        return self.build_report(status, reason).to_dict()

    def build_report(self, status: str, reason: str | None = None) -> Report:
        """The run's report so far, ``status`` ("completed" or "failed") with the ``reason`` of a failure."""
        c = self.config
        last = self.rounds[-1] if self.rounds else None
        owners = [
            OwnerResult(owner=o, num_examples=int(m["num-examples"]),
                        train_loss=self.owner_train.get(o, {}).get("train-loss"),
                        accuracy=m.get("accuracy"), precision=m.get("precision"), recall=m.get("recall"),
                        f1=m.get("f1"), loss=m.get("loss"), ray_node=self.owner_node.get(o),
                        claimed_name=self._claimed(o), **_release_flags(m, self.owner_train.get(o, {})))  # type: ignore[arg-type]  # the release flags are OwnerResult's bool fields
            for o, m in sorted(self.owner_eval.items(), key=lambda item: owner_order(item[0]))
        ]
        if c.dp:
            privacy = Privacy(
                mode="dp-sgd", delta=c.delta, accountant=ACCOUNTANT, budget_epsilon=c.epsilon,
                level="sample-level (DP-SGD at each owner, per-example adjacency)",
                max_epsilon=max((m["epsilon"] for m in self.owner_privacy.values()), default=None),
                ledger=self._ledger(), refusals=self.refusals,
                owners=[
                    OwnerPrivacy(owner=o, epsilon=m["epsilon"], **_across_runs(m),  # type: ignore[arg-type]  # the across-runs values are OwnerPrivacy's float fields
                                 epsilon_scaling_statistics=self._scaling_epsilon(o),
                                 noise_multiplier=m["noise-multiplier"], sample_rate=m["sample-rate"],
                                 steps=int(m["steps"]), max_grad_norm=m["max-grad-norm"], delta=m["delta"],
                                 num_examples=int(m["num-examples"]), claimed_name=self._claimed(o))
                    for o, m in sorted(self.owner_privacy.items(), key=lambda item: owner_order(item[0]))
                ],
            )
        else:
            privacy = Privacy(mode="none", refusals=self.refusals)
        privacy.audit = self.privacy_audit
        privacy.client_level = central_summary(self.central, c.delta)
        identity = None  # deployments with a node registry only: simulated owners are their partition numbers
        if self.identity_source or self.identity_claims:
            identity = Identity(source=self.identity_source or "the replies (self-declared)",
                                claims=self.identity_claims)
        mapping = c.to_mapping()
        return Report(
            status=status, reason=reason, dataset=c.dataset_label, num_clients=c.clients, num_rounds=c.rounds,
            strategy=c.strategy, model=c.model, partition=str(c.partition), initial=self.initial, rounds=self.rounds,
            unfinished_round=self._unfinished(), final=last.test if last else None, owners=owners, privacy=privacy,
            data_quality=DataQuality(
                note="counts of each owner's rows before and after cleaning; no value leaves an owner",
                cleaning={k: mapping[k] for k in ("missing", "duplicates", "outliers", "outlier-k", "scaling",
                                                  "scaling-stats", "id-columns", "augment")},
                owners=[OwnerQuality(owner=o, counts=q)
                        for o, q in sorted(self.owner_quality.items(), key=lambda item: owner_order(item[0]))],
            ),
            scaling=self.scaling,
            resources=Resources(ray_address=c.ray_address or None, cpus_per_worker=c.cpus_per_worker,
                                gpus_per_worker=c.gpus_per_worker, ray_nodes=sorted(self.ray_nodes)),
            timing=Timing(serverapp_seconds=round(time.time() - self.started + self._seconds_before, 3)),
            resumed=self.resumes,
            node_audit_heads={str(o): h for o, h in self.audit_heads.items()} if self.audit_heads else None,
            versions=_versions(), config=mapping, identity=identity,
            notes=[
                "The DP guarantee covers the model updates. Each owner's shard size, mean training loss and "
                "the metrics of the global model on its shard are released as plain numbers, outside it.",
            ] + ([RELEASE_NOTE] if any(m.get("evaluation-dp") for m in self.owner_eval.values())
                 or any(m.get("exact-replies") == 0.0 for m in self.owner_train.values()) else []),
        )

    def _unfinished(self) -> UnfinishedRound | None:
        """The round in progress when the run stopped (who replied, failed, timed out), or None."""
        rnd = self._round
        if rnd is None:
            return None
        return UnfinishedRound(round=rnd.number, participation=rnd.participation(), retried=rnd.earlier)

    def _ledger(self) -> str | None:
        """Where the owners' totals across runs come from, if anywhere."""
        if self.config.ledger:
            return f"simulation ledger in {self.config.ledger}"
        if any("ledger-epsilon" in m for m in self.owner_privacy.values()):
            return "each node's own ledger (its state folder)"
        return None

    def _scaling_epsilon(self, owner: OwnerId) -> float | None:
        """The epsilon of this owner's scaling-statistics release alone (included in its total)."""
        if self.scaling is None:
            return None
        return next((e["epsilon"] for e in self.scaling["owner_epsilon"] if e["owner"] == owner), None)

    def _current(self, server_round: int) -> _Round:
        if self._round is None or self._round.number != server_round:
            self._round = _Round(server_round, time.time())
        return self._round


def _across_runs(m: dict[str, float]) -> dict[str, float | None]:
    """An owner's budget, its total across runs (its ledger's, when it keeps one) and what remains.

    Without a ledger the run is all that is known: the total is None and the remaining budget is the
    run's budget less the run's epsilon.
    """
    total = m.get("ledger-epsilon")
    budget = m.get("ledger-budget", m["budget-epsilon"])
    spent = m["epsilon"] if total is None else total
    return {"epsilon_total": total, "budget_epsilon": budget, "remaining_epsilon": max(budget - spent, 0.0)}


RELEASE_NOTE = ("Owners with evaluation_dp true evaluated under DP at their node (Gaussian mechanism, charged to "
                f"their own budget): their num_examples, loss (per-example loss clipped to [0, {EVALUATION_LOSS_CLIP:g}]) "
                "and accuracy are "
                "noisy, precision/recall/F1 are not released; owners with exact_replies false withheld their "
                "train_loss and rounded their data-quality counts to one significant digit.")


def _release_flags(evaluation: dict[str, float], train: dict[str, float]) -> dict[str, bool]:
    """A deployed owner's release settings, as its replies state them (absent in simulation)."""
    flags = {}
    if "evaluation-dp" in evaluation:
        flags["evaluation_dp"] = bool(evaluation["evaluation-dp"])
    if "exact-replies" in train:
        flags["exact_replies"] = bool(train["exact-replies"])
    return flags


def records(msg: Message, kind: type[R]) -> dict[str, R]:
    """The reply's records of one kind (what Flower's ``metric_records`` etc. give, without their copying)."""
    return {name: record for name, record in msg.content.items() if isinstance(record, kind)}


def config_record(msg: Message, name: str) -> ConfigRecord | None:
    """The reply's ConfigRecord ``name``, if it has one."""
    record = msg.content.get(name)
    return record if isinstance(record, ConfigRecord) else None


def _metrics(msg: Message) -> Any:
    """The reply's (first) MetricRecord (through :func:`records`, not Flower's copying ``metric_records``)."""
    return next(iter(records(msg, MetricRecord).values()))


def owner_of(msg: Message) -> OwnerId:
    """A reply's owner: the deployed owner's name, or the simulated owner's number."""
    record = config_record(msg, OWNER_RECORD_KEY)
    if record is not None:
        return str(record["name"])
    return int(_metrics(msg)["owner"])


def ray_node_of(msg: Message) -> str | None:
    """The Ray node a reply was computed on, if the ClientApp ran in a Ray worker."""
    record = config_record(msg, PLACEMENT_RECORD_KEY)
    node = record.get("ray-node") if record is not None else None
    return str(node) if node else None


def _test_metrics(m: dict[str, float]) -> Metrics:
    return Metrics(test_loss=m["loss"], accuracy=m["accuracy"], precision=m["precision"], recall=m["recall"],
                   f1=m["f1"])


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("fedmodel", "flwr", "torch", "opacus", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
