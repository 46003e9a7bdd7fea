"""A simulated Flower node hosting a cohort of owners: train (or evaluate) those asked, one after another.

The coordinator's message names the owners it asks this round (:data:`~fedmodel.protocol.COHORT_KEY`,
see :mod:`fedmodel.server.cohorts`); this node hosts the owners ``o`` with ``o % nodes == partition-id``. Each
one is served by the very handler a node of its own would run, with a Context of its own: its
``partition-id`` is the owner's number and its ``state`` holds only that owner's records, kept in the
node's state under ``<record>@<owner>`` between rounds. So every owner keeps its own privacy state and
budget, and the node's reply carries each owner's records under ``<record>@<owner>`` and each owner's
failure in :data:`~fedmodel.protocol.COHORT_ERRORS_KEY`: one owner failing never fails the others.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedmodel.errors import FedModelError
from fedmodel.protocol import COHORT_ERRORS_KEY, COHORT_KEY, COHORT_SEPARATOR

Handler = Callable[[Message, Context], Message]
T = TypeVar("T")
STATE_INDEX_KEY = "fedmodel-cohort-state"
"""``context.state`` record of a cohort node: ``{owner: [names of that owner's state records]}``."""


def is_cohort_message(msg: Message) -> bool:
    """True when the message asks a cohort of owners (a simulation with ``nodes < clients``)."""
    config = msg.content.get("config")
    return isinstance(config, ConfigRecord) and COHORT_KEY in config


def serve_cohort(msg: Message, context: Context, handler: Handler) -> Message:
    """Run ``handler`` for each owner this node hosts among those the message asks; one reply for them all."""
    owners = hosted_owners(msg, context)
    content = RecordDict()
    errors: dict[str, str] = {}
    for owner in owners:
        own = owner_context(context, owner)
        try:
            reply = handler(msg, own)
        finally:
            keep_owner_state(context, own, owner)
        if reply.has_error():
            errors[str(owner)] = reply.error.reason  # type: ignore[assignment]  # a failed reply always carries its reason
            continue
        for name, record in reply.content.items():
            content[f"{name}{COHORT_SEPARATOR}{owner}"] = record
    if errors:
        content[COHORT_ERRORS_KEY] = ConfigRecord(errors)  # type: ignore[arg-type]  # dict is invariant: its values are valid record values
    return Message(content=content, reply_to=msg)


def hosted_owners(msg: Message, context: Context) -> list[int]:
    """The owners asked this round that live on this node (``owner % nodes == partition-id``).

    Raises FedModelError when the node's settings do not match the run's (not a cohort node).
    """
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise FedModelError(f"node {context.node_id}: a cohort message reached a node that is not simulated")
    pid, nodes = int(node["partition-id"]), int(node["num-partitions"])
    expected = int(context.run_config.get("nodes", 0))
    if nodes != expected:
        raise FedModelError(f"node {pid}: the simulation has {nodes} nodes, the run expects nodes = {expected}")
    asked = msg.content["config"][COHORT_KEY]
    return [int(o) for o in asked if int(o) % nodes == pid]  # type: ignore[union-attr]  # Flower types record values as a union; this one is a list


def owner_context(context: Context, owner: int) -> Context:
    """The Context one owner's handler sees: its own number as ``partition-id``, its own state records."""
    node_config = {**context.node_config, "partition-id": owner,
                   "num-partitions": int(context.run_config["clients"])}
    state = RecordDict()
    index = context.state.get(STATE_INDEX_KEY)
    for name in (index.get(str(owner), []) if index is not None else []):  # type: ignore[union-attr]  # Flower types record values as a union; this one is a list
        state[str(name)] = context.state[f"{name}{COHORT_SEPARATOR}{owner}"]  # type: ignore[str-bytes-safe]  # the index holds owner state names (str)
    return Context(run_id=context.run_id, node_id=context.node_id, node_config=node_config, state=state,
                   run_config=context.run_config)


def keep_owner_state(context: Context, own: Context, owner: int) -> None:
    """Put what the owner's handler left in its state back into the node's state, under the owner's name."""
    names = sorted(own.state.keys())
    for name in names:
        context.state[f"{name}{COHORT_SEPARATOR}{owner}"] = own.state[name]
    if STATE_INDEX_KEY not in context.state:
        context.state[STATE_INDEX_KEY] = ConfigRecord()
    index = context.state[STATE_INDEX_KEY]
    if names and list(index.get(str(owner), [])) != names:  # type: ignore[arg-type]  # the index's values are lists of state names
        index[str(owner)] = names  # type: ignore[assignment]  # the index is a ConfigRecord of name lists


class PerMessage(Generic[T]):
    """The value last computed for one message (and key): a cohort's owners, served one after another, share it.

    The slot holds the message itself, so its identity is never that of a later message.
    """

    def __init__(self) -> None:
        self._slot: tuple[Message, Hashable, T] | None = None

    def get(self, msg: Message, key: Hashable, compute: Callable[[], T]) -> T:
        if self._slot is not None and self._slot[0] is msg and self._slot[1] == key:
            return self._slot[2]
        value = compute()
        self._slot = (msg, key, value)
        return value


class CellCache(Generic[T]):
    """Least-recently-used values (owners' shards) up to ``max_cells`` cells in all; the newest is always kept.

    A cohort node serves the same owners every round; keeping their rows spares reading and
    preparing them again, while the bound keeps a worker's memory flat however many owners it hosts.
    """

    def __init__(self, max_cells: int) -> None:
        self.max_cells = max_cells
        self._items: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self._cells = 0

    def get(self, key: Hashable) -> T | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: T, cells: int) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._cells -= old[1]
        self._items[key] = (value, cells)
        self._cells += cells
        while self._cells > self.max_cells and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self._cells -= dropped

    def __len__(self) -> int:
        return len(self._items)
