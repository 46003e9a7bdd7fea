"""The data owner's Flower ClientApp: train privately on the owner's shard, reply with the update.

Thin by design: read the owner's identity and privacy state from the context, call
``fedmodel.owner``, pack the reply. A failure becomes an error reply that names the owner, so the
coordinator can report it and the federation goes on with the others.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.device import resolve_device
from fedmodel.errors import FedModelError
from fedmodel.owner import evaluate_owner, train_owner_round
from fedmodel.privacy import OwnerPrivacyState

app = ClientApp()
log = logging.getLogger("fedmodel.client")
PRIVACY_STATE_KEY = "fedmodel-privacy"


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return RunConfig.from_mapping(dict(items), source="run_config")


def run_config(context: Context) -> RunConfig:
    """The run's config, parsed once per process."""
    return _parse(tuple(sorted(context.run_config.items())))


def owner_id(context: Context, config: RunConfig) -> int:
    """The owner this node trains for: its partition in simulation."""
    owner = int(context.node_config["partition-id"])
    partitions = int(context.node_config["num-partitions"])
    if partitions != config.clients:
        raise FedModelError(f"owner {owner}: the simulation has {partitions} nodes, the run expects {config.clients}")
    return owner


def load_privacy(context: Context) -> OwnerPrivacyState:
    """This owner's privacy state within the run (kept in ``context.state`` between rounds)."""
    if PRIVACY_STATE_KEY in context.state:
        return OwnerPrivacyState.from_dict(dict(context.state[PRIVACY_STATE_KEY]))  # type: ignore[arg-type]
    return OwnerPrivacyState()


def save_privacy(context: Context, state: OwnerPrivacyState) -> None:
    context.state[PRIVACY_STATE_KEY] = ConfigRecord(state.to_dict())  # type: ignore[arg-type]


def _error_reply(msg: Message, owner: int | None, exc: BaseException) -> Message:
    who = f"owner {owner}" if owner is not None else "owner ?"
    text = str(exc)
    reason = text if text.startswith(f"{who}:") else f"{who}: {type(exc).__name__}: {text}"
    if not isinstance(exc, FedModelError):
        log.exception("%s failed", who)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this owner's shard with DP-SGD (or without, if --no-dp)."""
    torch.set_num_threads(1)
    owner: int | None = None
    try:
        config = run_config(context)
        owner = owner_id(context, config)
        shard = federated_split(config).owner(owner)
        privacy = load_privacy(context) if config.dp else None
        train_config = msg.content["config"]
        try:
            update = train_owner_round(
                config, owner, shard, msg.content["arrays"].to_torch_state_dict(), privacy=privacy,
                server_round=int(train_config["server-round"]),  # type: ignore[arg-type]
                proximal_mu=float(train_config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
                device=resolve_device(config.device),
            )
        finally:
            if privacy is not None:  # reserved steps count even if training failed part-way
                save_privacy(context, privacy)
    except Exception as exc:  # reported to the coordinator as this owner's failure
        return _error_reply(msg, owner, exc)
    content = RecordDict({"arrays": ArrayRecord(update.weights), "metrics": MetricRecord(update.metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this owner's shard; only aggregate numbers leave."""
    torch.set_num_threads(1)
    owner: int | None = None
    try:
        config = run_config(context)
        owner = owner_id(context, config)
        shard = federated_split(config).owner(owner)
        metrics = evaluate_owner(config, owner, shard, msg.content["arrays"].to_torch_state_dict(),
                                 device=resolve_device(config.device))
    except Exception as exc:
        return _error_reply(msg, owner, exc)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
