"""Owners named by their admitted key, not by what their replies say.

A deployed owner's reply carries its name (``OWNER_RECORD_KEY``, or ``owner NAME:`` at the start of
an error), but the node writes that itself: an admitted node could pose as another site. With
SuperNode authentication, Flower binds a reply's ``src_node_id`` to the key that signed the node's
requests, and the coordinator's registry (``fedmodel coordinator allow-node``, ``STATE/nodes.json``)
maps that node id to the name the coordinator gave the key. :class:`IdentifiedGrid` sits between
the ServerApp and Flower's grid and rewrites every reply's owner to the registry's name:

* a node in the registry is named as the registry says; a reply claiming another name is reported
  under the registry name, the claim passed to ``on_claim`` (the report and the audit log show it);
* a node not in the registry (not admitted by fedmodel) is ``node <id>``, and any name it claims is
  reported as a claim.

The ServerApp finds the registry through :data:`~fedmodel.deployment.coordinator.REGISTRY_ENV`, set by
``fedmodel coordinator start`` on its SuperLink (and so on its ServerApps). Without it (simulation,
``--insecure``) names stay what replies say: a simulated owner is its partition number.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Error, Message
from flwr.app.message.message import make_message

from fedmodel.deployment.coordinator import REGISTRY_ENV, read_registry
from fedmodel.protocol import OWNER_RECORD_KEY

log = logging.getLogger("fedmodel.server")
CLAIMED_NAME_KEY = "claimed-name"
"""Key the ServerApp adds to a reply's owner record when the node claimed a name other than its registry name."""
ClaimHandler = Callable[[int, str, str], None]
"""``on_claim(node_id, name, claimed)``: ``name`` is the registry's (or ``node <id>``), ``claimed`` the reply's."""


class NodeNames:
    """The coordinator's registry as names by Flower node id, read again when an unknown node id appears."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._names = self._read()

    @classmethod
    def from_environment(cls) -> NodeNames | None:
        """The registry named by :data:`REGISTRY_ENV`; None when it is not set (simulation, ``--insecure``)."""
        where = os.environ.get(REGISTRY_ENV, "")
        return cls(Path(where)) if where else None

    def name(self, node_id: int) -> str:
        """The registry's name of ``node_id``, else ``node <id>`` (a node fedmodel did not admit)."""
        if node_id not in self._names:  # admitted after the run started?
            self._names = self._read()
        return self._names.get(node_id, f"node {node_id}")

    def _read(self) -> dict[int, str]:
        return {entry.node_id: entry.name for entry in read_registry(self.path)}


class IdentifiedGrid:
    """Flower's grid, whose replies name their owner by the registry (see the module docstring)."""

    def __init__(self, grid: Any, names: NodeNames, on_claim: ClaimHandler) -> None:
        self._grid = grid
        self.names = names
        self.on_claim = on_claim

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self.identify(r) for r in self._grid.send_and_receive(messages, timeout=timeout)]

    def identify(self, reply: Message) -> Message:
        """``reply`` with its owner named by the registry."""
        node = int(reply.metadata.src_node_id)
        name = self.names.name(node)
        if reply.has_error():
            return self._identify_error(reply, node, name)
        record = reply.content.get(OWNER_RECORD_KEY)
        claimed = str(record.get("name", "")) if isinstance(record, ConfigRecord) else ""
        named = {"name": name}
        if claimed and claimed != name:
            named[CLAIMED_NAME_KEY] = claimed
            self.on_claim(node, name, claimed)
        reply.content[OWNER_RECORD_KEY] = ConfigRecord(named)  # type: ignore[arg-type]  # dict is invariant: its values are valid record values
        return reply

    def _identify_error(self, reply: Message, node: int, name: str) -> Message:
        reason = reply.error.reason
        head, sep, rest = reason.partition(":")  # type: ignore[union-attr]  # an error reply always carries its reason
        claimed = head.strip()[6:] if sep and head.strip().startswith("owner ") else ""
        prefix = name if name.startswith("node ") else f"owner {name}"
        if claimed == name:
            return reply
        if claimed:
            self.on_claim(node, name, claimed)
            reason = f"{prefix}: (the reply claimed to be owner {claimed}){rest}"
        else:
            reason = f"{prefix}: {reason}"
        return make_message(metadata=reply.metadata, error=Error(code=reply.error.code, reason=reason))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
