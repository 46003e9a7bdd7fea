"""What every ClientApp handler (tables, texts, cohorts) does at its boundary: read the run config, reply.

:func:`run_config` parses the run's config once per process, after a deployed node has refused
every key off its allow-list. :func:`reply` packs an owner's numbers with the owner's identity;
:func:`error_reply` turns a failure into an error reply that names the owner and, at a deployed
node, never carries a data value. :mod:`fedmodel.clients.app` (tables) and :mod:`fedmodel.clients.text` (language
models) both answer through here.
"""

from __future__ import annotations

import logging
import sys
from functools import lru_cache
from typing import Protocol

from fedmodel.clients.privacy_account import record_refusal
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedmodel.config import RunConfig
from fedmodel.errors import DataValidationError, FedModelError
from fedmodel.privacy.policy import check_run_config
from fedmodel.protocol import OWNER_RECORD_KEY, PLACEMENT_RECORD_KEY, QUALITY_RECORD_KEY

log = logging.getLogger("fedmodel.client")


class OwnerIdentity(Protocol):
    """Who a node trains for, as a reply and the owner's privacy record name it (tables' and texts' owners)."""

    @property
    def name(self) -> str: ...

    @property
    def seed_id(self) -> int: ...

    @property
    def simulated(self) -> bool: ...

    @property
    def config(self) -> RunConfig: ...


@lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, object], ...]) -> RunConfig:
    return RunConfig.from_mapping(dict(items), source="run_config")


def run_config(context: Context) -> RunConfig:
    """The run's config, parsed once per process; a deployed node first refuses keys off its allow-list."""
    if "data-path" in context.node_config:  # a deployed node (NodeSettings): before parsing, before any data
        check_run_config(str(context.node_config.get("owner-name", "owner")), context.run_config)
    return _parse(tuple(sorted(context.run_config.items())))


def reply(msg: Message, owner: OwnerIdentity, metrics: dict[str, float], arrays: ArrayRecord | None = None,
          quality: dict[str, int] | None = None) -> Message:
    """Metrics carry a numeric owner id in simulation; a deployed owner's name travels in a ConfigRecord."""
    content = RecordDict()
    if arrays is not None:
        content["arrays"] = arrays
    if quality is not None:
        content[QUALITY_RECORD_KEY] = ConfigRecord(quality)  # type: ignore[arg-type]  # dict is invariant: its values are valid record values
    local = getattr(owner, "local_statistics", ())  # a text owner (fedmodel.clients.text) cleans nothing
    if arrays is not None and local:  # a train reply, cleaned with the owner's own statistics
        metrics = {**metrics, "local-statistics": 1.0}
    if owner.simulated:
        metrics = {**metrics, "owner": float(owner.seed_id)}
    else:
        content[OWNER_RECORD_KEY] = ConfigRecord({"name": owner.name})
    content["metrics"] = MetricRecord(metrics)  # type: ignore[arg-type]  # dict is invariant: its values are valid record values
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


def error_reply(msg: Message, context: Context, exc: BaseException) -> Message:
    """The error reply naming the owner; a budget or policy refusal also goes to the owner's audit log."""
    who = owner_label(context)
    text = _public_text(context, exc)
    reason = text if text.startswith(f"{who}:") else f"{who}: {type(exc).__name__}: {text}"
    if not isinstance(exc, FedModelError):
        log.exception("%s failed", who)
    record_refusal(who.removeprefix("owner "), context, exc)  # a budget or policy refusal goes to the audit log
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def _public_text(context: Context, exc: BaseException) -> str:
    """What an error may tell the coordinator: a deployed node never sends a data value.

    A data error gives its public message (file, row, column; no value); an error fedmodel did not
    raise on purpose (a library's, whose text may quote data) only its type, the traceback staying in
    the node's log. A simulation (one trusted process tree) keeps the full text.
    """
    if "data-path" not in context.node_config:
        return str(exc)
    if isinstance(exc, DataValidationError):
        return exc.public_message
    if isinstance(exc, FedModelError):
        return str(exc)
    return "unexpected error (the details, which may quote the owner's data, are in the node's log)"


def owner_label(context: Context) -> str:
    """``owner NAME`` (deployed), ``owner ID`` (simulated), else ``node ID``: how errors name this node's owner."""
    node = context.node_config
    if "owner-name" in node:
        return f"owner {node['owner-name']}"
    if "partition-id" in node:
        return f"owner {node['partition-id']}"
    return f"node {context.node_id}"
