"""The run report as types: what ``report.json`` holds, built by the recorder and read by every reader.

:class:`Report` is written as ``report.json`` by :meth:`Report.to_dict` (the keys and their order are
the file format; a key marked *optional* below is written only when the run has it) and read back
by :meth:`Report.from_dict` / :meth:`Report.read`. Reading is tolerant: a missing section or a value
of the wrong shape becomes its empty default, so an older or partial report still renders. Keys this
module does not know (the language-model sections of a text run, for example) are kept in ``extra``
and written back unchanged.

Sections produced elsewhere and shown as they are (``privacy.audit`` from :mod:`fedmodel.server.canaries`,
``privacy.client_level`` from :mod:`fedmodel.privacy.central`, ``scaling``, ``resumed``, ``config``,
``versions``) stay mappings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmodel.owners import OwnerId

__all__ = [
    "Attempt", "AuditHead", "DataQuality", "Failure", "Identity", "IdentityClaim", "Metrics", "OwnerPrivacy",
    "OwnerQuality", "OwnerResult", "Privacy", "Refusal", "Report", "Resources", "Round", "Timing", "nan_to_none",
]

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------- tolerant reading
def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _maps(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _rest(data: Mapping[str, Any], known: tuple[str, ...]) -> Json:
    """The keys of ``data`` this module does not model, kept to be written back."""
    return {k: v for k, v in data.items() if k not in known}


def _optional(**items: Any) -> Json:
    """The items whose value is not None (the optional keys a run has)."""
    return {k: v for k, v in items.items() if v is not None}


def nan_to_none(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN).

    Parameters
    ----------
    value : Any
        A JSON-compatible value.

    Returns
    -------
    Any
        The same value, NaN and infinities as None.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------- rounds
@dataclass
class Failure:
    """One owner's failed reply: the node it came from, the owner when known, the reason it gave."""

    reason: str
    owner: OwnerId | None = None
    node_id: int | None = None  # None for failures outside a round's train messages

    KEYS = ("node_id", "owner", "reason")

    def to_dict(self) -> Json:
        return {**({"node_id": self.node_id} if self.node_id is not None else {}), "owner": self.owner,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failure:
        return cls(reason=str(data.get("reason", "")), owner=data.get("owner"), node_id=data.get("node_id"))

    @property
    def first_line(self) -> str:
        """The reason's first line (what a one-line summary shows)."""
        return self.reason.splitlines()[0] if self.reason else ""


@dataclass
class Attempt:
    """Who took part in one attempt at a round (a round retried under ``below-minimum = retry`` has several)."""

    attempt: int | None = None
    replied: list[OwnerId] | None = None  # None: an older report that kept counts only
    failures: list[Failure] = field(default_factory=list)
    timed_out: list[OwnerId] | None = None
    not_connected: list[OwnerId] | None = None

    def to_dict(self) -> Json:
        return {"attempt": self.attempt, "replied": self.replied, "failures": [f.to_dict() for f in self.failures],
                "timed_out": self.timed_out, "not_connected": self.not_connected}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(**cls._fields(data))

    @staticmethod
    def _fields(data: Mapping[str, Any]) -> Json:
        def owners(key: str) -> list[OwnerId] | None:
            return _list(data[key]) if isinstance(data.get(key), (list, tuple)) else None

        return {"attempt": data.get("attempt"), "replied": owners("replied"),
                "failures": [Failure.from_dict(f) for f in _maps(data.get("failures"))],
                "timed_out": owners("timed_out"), "not_connected": owners("not_connected")}


@dataclass
class Metrics:
    """Test metrics of the global model on the coordinator's test split."""

    test_loss: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    extra: Json = field(default_factory=dict)  # e.g. a text run's perplexity

    KEYS = ("test_loss", "accuracy", "precision", "recall", "f1")

    def to_dict(self, *, loss_last: bool = False) -> Json:
        """The metrics; ``loss_last`` writes ``test_loss`` after ``f1`` (the ``final`` section's order)."""
        scores = {"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "f1": self.f1}
        ordered = {**scores, "test_loss": self.test_loss} if loss_last else {"test_loss": self.test_loss, **scores}
        return {**ordered, **self.extra}

    @classmethod
    def from_dict(cls, data: Any) -> Metrics | None:
        if not isinstance(data, Mapping):
            return None
        return cls(**{k: data.get(k) for k in cls.KEYS}, extra=_rest(data, cls.KEYS))


@dataclass
class Round:
    """One finished round: its metrics, counts and who took part (its last attempt, earlier ones in ``retried``)."""

    round: int | None = None
    train_loss: float | None = None
    test: Metrics = field(default_factory=Metrics)
    num_replies: int | None = None
    num_failures: int | None = None
    seconds: float | None = None
    epsilon_max: float | None = None
    num_timed_out: int | None = None
    participation: Attempt = field(default_factory=Attempt)
    retried: list[Attempt] = field(default_factory=list)  # optional key: only a retried round has it
    owner_epsilon: list[tuple[OwnerId, float]] = field(default_factory=list)
    extra: Json = field(default_factory=dict)

    KEYS = ("round", "train_loss", *Metrics.KEYS, "num_replies", "num_failures", "seconds", "epsilon_max",
            "num_timed_out", "replied", "failures", "timed_out", "not_connected", "attempt", "retried",
            "owner_epsilon")
    CSV_KEYS = KEYS[:KEYS.index("replied")]
    """The keys of a metrics.csv row (and of the ``round`` progress event)."""

    def to_dict(self) -> Json:
        p = self.participation
        return {
            "round": self.round, "train_loss": self.train_loss, **self.test.to_dict(),
            "num_replies": self.num_replies, "num_failures": self.num_failures, "seconds": self.seconds,
            "epsilon_max": self.epsilon_max, "num_timed_out": self.num_timed_out,
            "replied": p.replied, "failures": [f.to_dict() for f in p.failures], "timed_out": p.timed_out,
            "not_connected": p.not_connected, "attempt": p.attempt,
            **({"retried": [a.to_dict() for a in self.retried]} if self.retried else {}),
            "owner_epsilon": [{"owner": o, "epsilon": e} for o, e in self.owner_epsilon],
            **self.extra,
        }

    def csv_row(self) -> Json:
        """The round's metrics.csv row."""
        return {k: v for k, v in self.to_dict().items() if k in self.CSV_KEYS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Round:
        return cls(
            round=data.get("round"), train_loss=data.get("train_loss"),
            test=Metrics.from_dict({k: data.get(k) for k in Metrics.KEYS}) or Metrics(),
            num_replies=data.get("num_replies"), num_failures=data.get("num_failures"), seconds=data.get("seconds"),
            epsilon_max=data.get("epsilon_max"), num_timed_out=data.get("num_timed_out"),
            participation=Attempt.from_dict(data),
            retried=[Attempt.from_dict(a) for a in _maps(data.get("retried"))],
            owner_epsilon=[(e.get("owner"), e.get("epsilon")) for e in _maps(data.get("owner_epsilon"))],  # type: ignore[misc]  # report.json as read; checked by the report's readers
            extra=_rest(data, cls.KEYS),
        )


@dataclass
class UnfinishedRound:
    """The round in progress when a run stopped: who replied, failed, timed out (``unfinished_round``)."""

    round: int | None
    participation: Attempt
    retried: list[Attempt] = field(default_factory=list)

    def to_dict(self) -> Json:
        return {"round": self.round, **self.participation.to_dict(),
                **({"retried": [a.to_dict() for a in self.retried]} if self.retried else {})}

    @classmethod
    def from_dict(cls, data: Any) -> UnfinishedRound | None:
        if not isinstance(data, Mapping) or not data:
            return None
        return cls(round=data.get("round"), participation=Attempt.from_dict(data),
                   retried=[Attempt.from_dict(a) for a in _maps(data.get("retried"))])


# ---------------------------------------------------------------------------------------- owners
@dataclass
class OwnerResult:
    """One owner's evaluation of the global model on its shard (``owners``)."""

    owner: OwnerId
    num_examples: int | None = None
    train_loss: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    loss: float | None = None
    ray_node: str | None = None
    claimed_name: list[str] | None = None  # optional: names its node's replies claimed (deployments)
    evaluation_dp: bool | None = None  # optional: a deployed owner's release settings, as its replies state
    exact_replies: bool | None = None
    extra: Json = field(default_factory=dict)

    KEYS = ("owner", "num_examples", "train_loss", "accuracy", "precision", "recall", "f1", "loss", "ray_node",
            "claimed_name", "evaluation_dp", "exact_replies")

    def to_dict(self) -> Json:
        return {"owner": self.owner, "num_examples": self.num_examples, "train_loss": self.train_loss,
                "accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "loss": self.loss, "ray_node": self.ray_node,
                **_optional(claimed_name=self.claimed_name, evaluation_dp=self.evaluation_dp,
                            exact_replies=self.exact_replies), **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OwnerResult:
        return cls(**{k: data.get(k) for k in cls.KEYS}, extra=_rest(data, cls.KEYS))  # type: ignore[arg-type]  # report.json as read; checked by the report's readers


@dataclass
class OwnerPrivacy:
    """One owner's sample-level privacy: this run's epsilon, its total across runs and its DP-SGD settings."""

    owner: OwnerId
    epsilon: float | None = None
    epsilon_total: float | None = None  # its ledger's total across runs; None without a ledger
    budget_epsilon: float | None = None
    remaining_epsilon: float | None = None
    epsilon_scaling_statistics: float | None = None  # of ``epsilon``: the scaling-statistics release
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    max_grad_norm: float | None = None
    delta: float | None = None
    num_examples: int | None = None
    claimed_name: list[str] | None = None  # optional
    extra: Json = field(default_factory=dict)

    KEYS = ("owner", "epsilon", "epsilon_total", "budget_epsilon", "remaining_epsilon", "epsilon_scaling_statistics",
            "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta", "num_examples", "claimed_name")

    def to_dict(self) -> Json:
        return {**{k: getattr(self, k) for k in self.KEYS[:-1]}, **_optional(claimed_name=self.claimed_name),
                **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OwnerPrivacy:
        return cls(**{k: data.get(k) for k in cls.KEYS}, extra=_rest(data, cls.KEYS))  # type: ignore[arg-type]  # report.json as read; checked by the report's readers


@dataclass
class Refusal:
    """An owner's refusal to train or evaluate: its budget or a rule of its privacy policy."""

    round: int | None
    owner: OwnerId | None
    rule: str | None
    reason: str

    def to_dict(self) -> Json:
        return {"round": self.round, "owner": self.owner, "rule": self.rule, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Refusal:
        return cls(round=data.get("round"), owner=data.get("owner"), rule=data.get("rule"),
                   reason=str(data.get("reason", "")))


@dataclass
class Privacy:
    """The privacy section: settings, each owner's numbers, refusals, and central DP and audit when run."""

    mode: str | None = None  # "dp-sgd" or "none"
    delta: float | None = None
    accountant: str | None = None
    budget_epsilon: float | None = None
    level: str | None = None  # optional: with DP only
    max_epsilon: float | None = None
    ledger: str | None = None
    refusals: list[Refusal] = field(default_factory=list)
    owners: list[OwnerPrivacy] = field(default_factory=list)
    audit: Json | None = None  # optional: --audit's outcome (fedmodel.server.canaries)
    client_level: Json | None = None  # central DP's guarantee (fedmodel.privacy.central.summary), or None
    extra: Json = field(default_factory=dict)

    KEYS = ("mode", "delta", "accountant", "budget_epsilon", "level", "max_epsilon", "ledger", "refusals", "owners",
            "audit", "client_level")

    @property
    def dp(self) -> bool:
        """Whether the owners trained with DP-SGD."""
        return str(self.mode).strip().lower() not in ("none", "")

    def to_dict(self) -> Json:
        return {"mode": self.mode, "delta": self.delta, "accountant": self.accountant,
                "budget_epsilon": self.budget_epsilon, **_optional(level=self.level), "max_epsilon": self.max_epsilon,
                "ledger": self.ledger, "refusals": [r.to_dict() for r in self.refusals],
                "owners": [o.to_dict() for o in self.owners], **_optional(audit=self.audit),
                "client_level": self.client_level, **self.extra}

    @classmethod
    def from_dict(cls, data: Any) -> Privacy:
        data = _map(data)
        return cls(
            mode=data.get("mode"), delta=data.get("delta"), accountant=data.get("accountant"),
            budget_epsilon=data.get("budget_epsilon"), level=data.get("level"), max_epsilon=data.get("max_epsilon"),
            ledger=data.get("ledger"), refusals=[Refusal.from_dict(r) for r in _maps(data.get("refusals"))],
            owners=[OwnerPrivacy.from_dict(o) for o in _maps(data.get("owners"))],
            audit=dict(data["audit"]) if isinstance(data.get("audit"), Mapping) else None,
            client_level=dict(data["client_level"]) if isinstance(data.get("client_level"), Mapping) else None,
            extra=_rest(data, cls.KEYS),
        )


@dataclass
class OwnerQuality:
    """One owner's data-quality counts before and after cleaning (counts only, never a value)."""

    owner: OwnerId
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> Json:
        return {"owner": self.owner, **self.counts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OwnerQuality:
        return cls(owner=data.get("owner"), counts=_rest(data, ("owner",)))  # type: ignore[arg-type]  # counts as read


@dataclass
class DataQuality:
    """The data-quality section: the cleaning settings and each owner's counts."""

    note: str | None = None
    cleaning: Json = field(default_factory=dict)
    owners: list[OwnerQuality] = field(default_factory=list)

    def to_dict(self) -> Json:
        return {"note": self.note, "cleaning": self.cleaning, "owners": [o.to_dict() for o in self.owners]}

    @classmethod
    def from_dict(cls, data: Any) -> DataQuality | None:
        if not isinstance(data, Mapping) or not data:
            return None
        return cls(note=data.get("note"), cleaning=dict(_map(data.get("cleaning"))),
                   owners=[OwnerQuality.from_dict(o) for o in _maps(data.get("owners"))])


# ---------------------------------------------------------------------------------------- run facts
@dataclass
class Resources:
    """Where the owners trained: the Ray cluster and each worker's share."""

    ray_address: str | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    ray_nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> Json:
        return {"ray_address": self.ray_address, "cpus_per_worker": self.cpus_per_worker,
                "gpus_per_worker": self.gpus_per_worker, "ray_nodes": self.ray_nodes}

    @classmethod
    def from_dict(cls, data: Any) -> Resources | None:
        if not isinstance(data, Mapping) or not data:
            return None
        return cls(ray_address=data.get("ray_address"), cpus_per_worker=data.get("cpus_per_worker"),
                   gpus_per_worker=data.get("gpus_per_worker"), ray_nodes=[str(n) for n in _list(data.get("ray_nodes"))])


@dataclass
class Timing:
    """Seconds: the ServerApp's (recorder), the whole command's and its start-up (added by the command)."""

    serverapp_seconds: float | None = None
    total_seconds: float | None = None
    startup_seconds: float | None = None
    extra: Json = field(default_factory=dict)

    KEYS = ("serverapp_seconds", "total_seconds", "startup_seconds")

    def to_dict(self) -> Json:
        return {**_optional(**{k: getattr(self, k) for k in self.KEYS}), **self.extra}

    def items(self) -> list[tuple[str, Any]]:
        """``(name, seconds)`` of every timing present, in the file's order."""
        return list(self.to_dict().items())

    @classmethod
    def from_dict(cls, data: Any) -> Timing:
        data = _map(data)
        return cls(**{k: data.get(k) for k in cls.KEYS}, extra=_rest(data, cls.KEYS))


@dataclass
class AuditHead:
    """A deployed owner's audit-log head (count, tip) as one of its replies stated it."""

    round: int
    kind: str
    owner: OwnerId
    count: int
    tip: str
    keyed: bool
    rolled_back_from: int | None = None  # optional: a count lower than one seen before

    def to_dict(self) -> Json:
        return {"round": self.round, "kind": self.kind, "owner": self.owner, "count": self.count, "tip": self.tip,
                "keyed": self.keyed, **_optional(rolled_back_from=self.rolled_back_from)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditHead:
        return cls(round=data.get("round"), kind=data.get("kind"), owner=data.get("owner"),  # type: ignore[arg-type]  # report.json as read; checked by the report's readers
                   count=data.get("count"), tip=data.get("tip"), keyed=data.get("keyed"),  # type: ignore[arg-type]  # report.json as read; checked by the report's readers
                   rolled_back_from=data.get("rolled_back_from"))  # as read: a reader shows what the file says


@dataclass
class IdentityClaim:
    """A reply from ``node_id`` (registry name ``owner``) that claimed to be ``claimed_name``: flagged, never believed."""

    node_id: int
    owner: OwnerId
    claimed_name: str
    round: int | None

    def to_dict(self) -> Json:
        return {"node_id": self.node_id, "owner": self.owner, "claimed_name": self.claimed_name, "round": self.round}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentityClaim:
        return cls(node_id=data.get("node_id"), owner=data.get("owner"),  # type: ignore[arg-type]  # as read
                   claimed_name=str(data.get("claimed_name")), round=data.get("round"))


@dataclass
class Identity:
    """Where owners' names come from (deployments with a node registry) and the claims flagged."""

    source: str
    claims: list[IdentityClaim] = field(default_factory=list)

    def to_dict(self) -> Json:
        return {"source": self.source, "claims": [c.to_dict() for c in self.claims]}

    @classmethod
    def from_dict(cls, data: Any) -> Identity | None:
        if not isinstance(data, Mapping):
            return None
        return cls(source=str(data.get("source")),
                   claims=[IdentityClaim.from_dict(c) for c in _maps(data.get("claims"))])


# ---------------------------------------------------------------------------------------- the report
@dataclass
class Report:
    """A run's report: what ``report.json`` holds."""

    status: str | None = None
    reason: str | None = None
    dataset: str | None = None
    num_clients: int | None = None
    num_rounds: int | None = None
    strategy: str | None = None
    model: str | None = None
    partition: str | None = None
    initial: Metrics | None = None
    rounds: list[Round] = field(default_factory=list)
    unfinished_round: UnfinishedRound | None = None
    final: Metrics | None = None
    owners: list[OwnerResult] = field(default_factory=list)
    privacy: Privacy = field(default_factory=Privacy)
    data_quality: DataQuality | None = None
    scaling: Json | None = None  # federated scaling statistics (RunRecorder.scaling_statistics), or None
    resources: Resources | None = None
    timing: Timing = field(default_factory=Timing)
    resumed: list[Json] = field(default_factory=list)
    node_audit_heads: dict[str, list[AuditHead]] | None = None  # optional: deployed owners' audit-log heads
    versions: dict[str, str] = field(default_factory=dict)
    config: Json = field(default_factory=dict)
    identity: Identity | None = None  # optional: deployments with a node registry, or a claim seen
    notes: list[str] = field(default_factory=list)
    flower_status: str | None = None  # optional: added by the command once Flower says how the run ended
    extra: Json = field(default_factory=dict)  # sections of other kinds of run (a text run's language_model, ...)

    KEYS = ("status", "reason", "dataset", "num_clients", "num_rounds", "strategy", "model", "partition", "initial",
            "rounds", "unfinished_round", "final", "owners", "privacy", "data_quality", "scaling", "resources",
            "timing", "resumed", "node_audit_heads", "versions", "config", "identity", "notes", "flower_status")

    def to_dict(self) -> Json:
        """The ``report.json`` content (NaN written as null).

        Returns
        -------
        dict[str, Any]
            The report, its keys in the file's order; optional keys only when the run has them.
        """
        heads = (None if self.node_audit_heads is None else
                 {o: [h.to_dict() for h in hs] for o, hs in self.node_audit_heads.items()})
        return nan_to_none({
            "status": self.status, "reason": self.reason, "dataset": self.dataset, "num_clients": self.num_clients,
            "num_rounds": self.num_rounds, "strategy": self.strategy, "model": self.model,
            "partition": self.partition, "initial": self.initial.to_dict() if self.initial else None,
            "rounds": [r.to_dict() for r in self.rounds],
            "unfinished_round": self.unfinished_round.to_dict() if self.unfinished_round else None,
            "final": self.final.to_dict(loss_last=True) if self.final else None,
            "owners": [o.to_dict() for o in self.owners], "privacy": self.privacy.to_dict(),
            "data_quality": self.data_quality.to_dict() if self.data_quality else None, "scaling": self.scaling,
            "resources": self.resources.to_dict() if self.resources else None, "timing": self.timing.to_dict(),
            "resumed": self.resumed, **_optional(node_audit_heads=heads), "versions": self.versions,
            "config": self.config, **_optional(identity=self.identity.to_dict() if self.identity else None),
            "notes": self.notes, **_optional(flower_status=self.flower_status), **self.extra,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Read a report (``report.json``'s content); missing or malformed sections become their defaults.

        Parameters
        ----------
        data : Mapping[str, Any]
            The report.

        Returns
        -------
        Report
            The typed report.
        """
        data = _map(data)
        heads = data.get("node_audit_heads")
        return cls(
            status=data.get("status"), reason=data.get("reason"), dataset=data.get("dataset"),
            num_clients=data.get("num_clients"), num_rounds=data.get("num_rounds"), strategy=data.get("strategy"),
            model=data.get("model"), partition=data.get("partition"), initial=Metrics.from_dict(data.get("initial")),
            rounds=[Round.from_dict(r) for r in _maps(data.get("rounds"))],
            unfinished_round=UnfinishedRound.from_dict(data.get("unfinished_round")),
            final=Metrics.from_dict(data.get("final")),
            owners=[OwnerResult.from_dict(o) for o in _maps(data.get("owners"))],
            privacy=Privacy.from_dict(data.get("privacy")), data_quality=DataQuality.from_dict(data.get("data_quality")),
            scaling=dict(data["scaling"]) if isinstance(data.get("scaling"), Mapping) else None,
            resources=Resources.from_dict(data.get("resources")), timing=Timing.from_dict(data.get("timing")),
            resumed=[dict(r) for r in _maps(data.get("resumed"))],
            node_audit_heads=({str(o): [AuditHead.from_dict(h) for h in _maps(hs)] for o, hs in heads.items()}
                              if isinstance(heads, Mapping) else None),
            versions={str(k): str(v) for k, v in _map(data.get("versions")).items()},
            config=dict(_map(data.get("config"))), identity=Identity.from_dict(data.get("identity")),
            notes=[str(n) for n in _list(data.get("notes"))], flower_status=data.get("flower_status"),
            extra=_rest(data, cls.KEYS),
        )

    @classmethod
    def read(cls, path: Path) -> Report:
        """Read ``report.json``.

        Parameters
        ----------
        path : Path
            The file.

        Returns
        -------
        Report
            The typed report.
        """
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def failures(self) -> int:
        """Owner failures over all finished rounds."""
        return sum(r.num_failures or 0 for r in self.rounds)
