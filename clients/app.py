"""The data owner's Flower ClientApp: train privately on the owner's shard, reply with the update.

Thin by design: find out which owner this node is and load its shard, call ``fedmodel.owner``,
pack the reply. The same code serves both runtimes:

* simulation: ``node_config`` holds ``partition-id``; the shard is that partition of the run's data set;
* deployment: ``node_config`` holds the owner's own settings (``data-path``, ``budget-epsilon``, ...,
  see :class:`~fedmodel.config.NodeSettings`), which nothing the coordinator sends can override.

A failure becomes an error reply that names the owner, so the coordinator reports it and the
federation goes on with the others.
"""

from __future__ import annotations

import logging
import sys
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedmodel.config import NodeSettings, RunConfig
from fedmodel.data import Dataset, federated_split
from fedmodel.data.files import read_table
from fedmodel.data.schema import Schema
from fedmodel.device import resolve_device
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.owner import evaluate_owner, train_owner_round
from fedmodel.privacy import OwnerPrivacyState
from fedmodel.protocol import OWNER_RECORD_KEY, PLACEMENT_RECORD_KEY

app = ClientApp()
log = logging.getLogger("fedmodel.client")
PRIVACY_STATE_KEY = "fedmodel-privacy"
"""ConfigRecord of a reply saying where it was computed: ``ray-node`` when the ClientApp ran in a Ray worker."""


@dataclass(frozen=True)
class Owner:
    """Who this node trains for, with the run config as this owner applies it and its shard."""

    name: str
    seed_id: int
    simulated: bool
    config: RunConfig
    shard: Dataset


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return RunConfig.from_mapping(dict(items), source="run_config")


def run_config(context: Context) -> RunConfig:
    """The run's config, parsed once per process."""
    return _parse(tuple(sorted(context.run_config.items())))


def resolve_owner(msg: Message, context: Context) -> Owner:
    """This node's owner: a simulated partition, or a deployed owner with its own settings and file."""
    config = run_config(context)
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None:
        pid = int(context.node_config["partition-id"])
        partitions = int(context.node_config["num-partitions"])
        if partitions != config.clients:
            raise FedModelError(f"owner {pid}: the simulation has {partitions} nodes, the run expects {config.clients}")
        return Owner(str(pid), pid, True, config, federated_split(config).owner(pid))
    if not config.dp:
        raise ConfigError([f"owner {settings.owner_name}: this node trains only with DP; the run has dp = false"])
    schema = Schema.from_config(dict(msg.content["config"]))
    if schema is None:
        raise FedModelError(f"owner {settings.owner_name}: the run declared no data schema; refusing to guess it")
    shard = _read_shard(settings.data_path, settings.label, schema)
    seed_id = zlib.crc32(settings.owner_name.encode())
    return Owner(settings.owner_name, seed_id, False, settings.apply(config), shard)


@lru_cache(maxsize=2)
def _read_shard(path: str, label: str, schema: Schema) -> Dataset:
    return read_table(Path(path), label, schema)


def load_privacy(context: Context) -> OwnerPrivacyState:
    """This owner's privacy state within the run (kept in ``context.state`` between rounds)."""
    if PRIVACY_STATE_KEY in context.state:
        return OwnerPrivacyState.from_dict(dict(context.state[PRIVACY_STATE_KEY]))  # type: ignore[arg-type]
    return OwnerPrivacyState()


def save_privacy(context: Context, state: OwnerPrivacyState) -> None:
    context.state[PRIVACY_STATE_KEY] = ConfigRecord(state.to_dict())  # type: ignore[arg-type]


def _reply(msg: Message, owner: Owner, metrics: dict[str, float], arrays: ArrayRecord | None = None) -> Message:
    """Metrics carry a numeric owner id in simulation; a deployed owner's name travels in a ConfigRecord."""
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = arrays
    if owner.simulated:
        metrics = {**metrics, "owner": float(owner.seed_id)}
    else:
        content[OWNER_RECORD_KEY] = ConfigRecord({"name": owner.name})
    content["metrics"] = MetricRecord(metrics)  # type: ignore[arg-type]
    node = ray_node_id()
    if node is not None:
        content[PLACEMENT_RECORD_KEY] = ConfigRecord({"ray-node": node})
    return Message(content=content, reply_to=msg)


def ray_node_id() -> str | None:
    """The Ray node this ClientApp runs on (a simulation worker); None outside Ray.

    Ray is imported already in a Ray worker; a deployed node never pays for importing it.
    """
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # a placement we cannot tell must not fail the owner's reply
        return None


def _error_reply(msg: Message, context: Context, exc: BaseException) -> Message:
    who = _owner_label(context)
    text = str(exc)
    reason = text if text.startswith(f"{who}:") else f"{who}: {type(exc).__name__}: {text}"
    if not isinstance(exc, FedModelError):
        log.exception("%s failed", who)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _owner_label(context: Context) -> str:
    node = context.node_config
    if "owner-name" in node:
        return f"owner {node['owner-name']}"
    if "partition-id" in node:
        return f"owner {node['partition-id']}"
    return f"node {context.node_id}"


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this owner's shard with DP-SGD (or without, if --no-dp)."""
    torch.set_num_threads(1)
    try:
        owner = resolve_owner(msg, context)
        config = owner.config
        privacy = load_privacy(context) if config.dp else None
        train_config = msg.content["config"]
        try:
            update = train_owner_round(
                config, owner.seed_id, owner.shard, msg.content["arrays"].to_torch_state_dict(), privacy=privacy,
                server_round=int(train_config["server-round"]),  # type: ignore[arg-type]
                proximal_mu=float(train_config.get("proximal-mu", 0.0)),  # type: ignore[arg-type]
                device=resolve_device(config.device),
            )
        finally:
            if privacy is not None:  # reserved steps count even if training failed part-way
                save_privacy(context, privacy)
    except Exception as exc:  # reported to the coordinator as this owner's failure
        return _error_reply(msg, context, exc)
    return _reply(msg, owner, update.metrics, ArrayRecord(update.weights))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this owner's shard; only aggregate numbers leave."""
    torch.set_num_threads(1)
    try:
        owner = resolve_owner(msg, context)
        metrics = evaluate_owner(owner.config, owner.shard, msg.content["arrays"].to_torch_state_dict(),
                                 device=resolve_device(owner.config.device))
    except Exception as exc:
        return _error_reply(msg, context, exc)
    return _reply(msg, owner, metrics)
