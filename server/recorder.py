"""Turns the strategy's rounds into the run folder: per-round rows, per-owner privacy, failures."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from fedmodel.protocol import OWNER_RECORD_KEY, PLACEMENT_RECORD_KEY, QUALITY_RECORD_KEY
from fedmodel.config import RunConfig
from fedmodel.errors import AllClientsFailedError
from fedmodel.privacy import ACCOUNTANT
from fedmodel.report.run_folder import RunFolder


OwnerId = int | str


@dataclass
class _Round:
    number: int
    started: float
    train: list[dict[str, Any]] = field(default_factory=list)
    evaluate: list[dict[str, float]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


class RunRecorder:
    """Collects what each round produced and writes it to the run folder as it goes."""

    def __init__(self, config: RunConfig, folder: RunFolder) -> None:
        self.config = config
        self.folder = folder
        self.started = time.time()
        self.initial: dict[str, float] | None = None
        self.rows: list[dict[str, Any]] = []
        self.owner_privacy: dict[OwnerId, dict[str, float]] = {}
        self.owner_eval: dict[OwnerId, dict[str, float]] = {}
        self.owner_train: dict[OwnerId, dict[str, float]] = {}
        self.owner_node: dict[OwnerId, str] = {}
        self.ray_nodes: set[str] = set()
        self.owner_quality: dict[OwnerId, dict[str, int]] = {}
        self.scaling: dict[str, Any] | None = None
        self._round: _Round | None = None

    # ------------------------------------------------------------------ strategy hooks
    def round_started(self, server_round: int) -> None:
        self._round = _Round(server_round, time.time())
        self.folder.event("round-start", round=server_round, rounds=self.config.rounds)

    def train_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Record replies (metrics and failures); raise if every sampled owner failed."""
        rnd = self._current(server_round)
        replies = list(replies)
        for msg in replies:
            if msg.has_error():
                rnd.failures.append({
                    "node_id": int(msg.metadata.src_node_id), "owner": _owner_in(msg.error.reason),
                    "reason": msg.error.reason,
                })
            else:
                owner = owner_of(msg)
                metrics = {k: float(v) for k, v in _metrics(msg).items()}  # type: ignore[arg-type]
                rnd.train.append({**metrics, "owner": owner})
                self.owner_train[owner] = metrics
                quality = msg.content.config_records.get(QUALITY_RECORD_KEY)
                if quality is not None:  # counts only: anything else in the record is ignored
                    self.owner_quality[owner] = {str(k): int(v) for k, v in quality.items()
                                                 if isinstance(v, int) and not isinstance(v, bool)}
                node = ray_node_of(msg)
                if node is not None:
                    self.owner_node[owner] = node
                    self.ray_nodes.add(node)
                if "epsilon" in metrics:
                    self.owner_privacy[owner] = metrics
        if replies and not rnd.train:
            reasons = "; ".join(sorted({f["reason"].splitlines()[0] for f in rnd.failures}))
            raise AllClientsFailedError(
                f"round {server_round}: all {len(replies)} owners failed, nothing to aggregate: {reasons}"
            )
        if not replies:
            raise AllClientsFailedError(f"round {server_round}: no owner replied")
        return replies

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
        quality = msg.content.config_records.get(QUALITY_RECORD_KEY)
        if quality is not None:
            self.owner_quality[owner] = {str(k): int(v) for k, v in quality.items()
                                         if isinstance(v, int) and not isinstance(v, bool)}

    def evaluate_replies(self, server_round: int, replies: Iterable[Message]) -> None:
        rnd = self._current(server_round)
        for msg in replies:
            if not msg.has_error():
                metrics = {k: float(v) for k, v in _metrics(msg).items()}  # type: ignore[arg-type]
                rnd.evaluate.append(metrics)
                self.owner_eval[owner_of(msg)] = metrics

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
            "owner_epsilon": [{"owner": o, "epsilon": e} for o, e in sorted(owners.items(), key=lambda i: _sort_key(i[0]))],
            "failures": failures,
        }
        self.folder.event("scaling-statistics", owners=stats.owners, failures=len(failures))

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
        row: dict[str, Any] = {
            "round": server_round, "train_loss": train_loss, **_test_metrics(metrics),
            "num_replies": len(rnd.train), "num_failures": len(rnd.failures),
            "seconds": round(time.time() - rnd.started, 3),
            "epsilon_max": max(eps) if eps else None,
        }
        self.folder.append_round(row)
        row["failures"] = rnd.failures
        row["owner_epsilon"] = [{"owner": m["owner"], "epsilon": m["epsilon"]}
                                for m in sorted(rnd.train, key=lambda m: _sort_key(m["owner"])) if "epsilon" in m]
        self.rows.append(row)
        self.folder.event("round", **{k: v for k, v in row.items() if k not in ("failures", "owner_epsilon")})
        self._round = None

    # ------------------------------------------------------------------ report
    def report(self, status: str, reason: str | None = None) -> dict[str, Any]:
        """The report.json content (NaN written as null)."""
        c = self.config
        last = self.rows[-1] if self.rows else None
        final = {k: last[k] for k in ("accuracy", "precision", "recall", "f1", "test_loss")} if last else None
        owners = [
            {"owner": o, "num_examples": int(m["num-examples"]), 
             "train_loss": self.owner_train.get(o, {}).get("train-loss"),
             **{k: m.get(k) for k in ("accuracy", "precision", "recall", "f1")}, "loss": m.get("loss"),
             "ray_node": self.owner_node.get(o)}
            for o, m in sorted(self.owner_eval.items(), key=lambda item: _sort_key(item[0]))
        ]
        privacy: dict[str, Any] = {"mode": "dp-sgd" if c.dp else "none"}
        if c.dp:
            privacy.update({
                "delta": c.delta, "accountant": ACCOUNTANT, "budget_epsilon": c.epsilon,
                "level": "sample-level (DP-SGD at each owner, per-example adjacency)",
                "max_epsilon": max((m["epsilon"] for m in self.owner_privacy.values()), default=None),
                "owners": [
                    {"owner": o, "epsilon": m["epsilon"], "budget_epsilon": m["budget-epsilon"],
                     "epsilon_scaling_statistics": self._scaling_epsilon(o),
                     "noise_multiplier": m["noise-multiplier"], "sample_rate": m["sample-rate"],
                     "steps": int(m["steps"]), "max_grad_norm": m["max-grad-norm"], "delta": m["delta"],
                     "num_examples": int(m["num-examples"])}
                    for o, m in sorted(self.owner_privacy.items(), key=lambda item: _sort_key(item[0]))
                ],
            })
        else:
            privacy.update({"delta": None, "accountant": None, "budget_epsilon": None, "max_epsilon": None,
                            "owners": []})
        return _nan_to_none({
            "status": status, "reason": reason, "dataset": c.dataset_label, "num_clients": c.clients,
            "num_rounds": c.rounds, "strategy": c.strategy, "model": c.model, "partition": str(c.partition),
            "initial": self.initial, "rounds": self.rows, "final": final, "owners": owners, "privacy": privacy,
            "data_quality": {
                "note": "counts of each owner's rows before and after cleaning; no value leaves an owner",
                "cleaning": {k: c.to_mapping()[k] for k in ("missing", "duplicates", "outliers", "outlier-k",
                                                            "scaling", "scaling-stats", "id-columns", "augment")},
                "owners": [{"owner": o, **q} for o, q in sorted(self.owner_quality.items(),
                                                                 key=lambda item: _sort_key(item[0]))],
            },
            "scaling": self.scaling,
            "resources": {
                "ray_address": c.ray_address or None, "cpus_per_worker": c.cpus_per_worker,
                "gpus_per_worker": c.gpus_per_worker, "ray_nodes": sorted(self.ray_nodes),
            },
            "timing": {"serverapp_seconds": round(time.time() - self.started, 3)},
            "versions": _versions(), "config": c.to_mapping(),
            "notes": [
                "The DP guarantee covers the model updates. Each owner's shard size, mean training loss and "
                "the metrics of the global model on its shard are released as plain numbers, outside it.",
            ],
        })

    def _scaling_epsilon(self, owner: OwnerId) -> float | None:
        """The epsilon of this owner's scaling-statistics release alone (included in its total)."""
        if self.scaling is None:
            return None
        return next((e["epsilon"] for e in self.scaling["owner_epsilon"] if e["owner"] == owner), None)

    def _current(self, server_round: int) -> _Round:
        if self._round is None or self._round.number != server_round:
            self._round = _Round(server_round, time.time())
        return self._round


def _metrics(msg: Message) -> Any:
    return next(iter(msg.content.metric_records.values()))


def owner_of(msg: Message) -> OwnerId:
    """A reply's owner: the deployed owner's name, or the simulated owner's number."""
    record = msg.content.config_records.get(OWNER_RECORD_KEY)
    if record is not None:
        return str(record["name"])
    return int(_metrics(msg)["owner"])


def ray_node_of(msg: Message) -> str | None:
    """The Ray node a reply was computed on, if the ClientApp ran in a Ray worker."""
    record = msg.content.config_records.get(PLACEMENT_RECORD_KEY)
    node = record.get("ray-node") if record is not None else None
    return str(node) if node else None


def _owner_in(reason: str) -> OwnerId | None:
    """The owner a ClientApp error reply names ("owner 3: ..." or "owner site-a: ..."), if any."""
    head = reason.split(":", 1)[0].strip()
    if not head.startswith("owner ") or not head[6:]:
        return None
    name = head[6:]
    return int(name) if name.isdigit() else name


def _sort_key(owner: OwnerId) -> tuple[int, str]:
    return (owner, "") if isinstance(owner, int) else (0, owner)


def _test_metrics(m: dict[str, float]) -> dict[str, float]:
    return {"test_loss": m["loss"], "accuracy": m["accuracy"], "precision": m["precision"],
            "recall": m["recall"], "f1": m["f1"]}


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("fedmodel", "flwr", "torch", "opacus", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
