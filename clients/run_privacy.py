"""The ClientApp's side of carrying an owner's privacy state across crashes (see :mod:`fedmodel.privacy.run_privacy`).

Where the state of the run comes from, first found wins:

1. ``context.state``: the owner has trained in this Flower run already;
2. deployed node: ``<state-dir>/privacy-runs/<run id>.json``, written before every round's first step
   and after it, so a restarted SuperNode, or the resumed run of a restarted coordinator, continues
   from it; the run id is fedmodel's (``run-id``, kept by ``--resume``), not Flower's;
3. simulated owner: the hand-back a resumed simulation's coordinator puts in the train config
   (``fedmodel-resume:<owner>``): the state the owner last reported and the rounds since, the round
   in flight at the crash included. A deployed node never takes it: its own record is the truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedmodel.clients.cohort import PerMessage
from fedmodel.clients.replies import OwnerIdentity
from flwr.app import ConfigRecord, Context, Message

from fedmodel.config import NodeSettings
from fedmodel.privacy import OwnerPrivacyState
from fedmodel.privacy.run_privacy import CarriedPrivacy, HandBack, RoundPrivacy, load_file, round_digest, save_file
from fedmodel.protocol import HANDBACK_PREFIX
from fedmodel.protocol import PRIVACY_REPLY_KEY as REPLY_KEY  # noqa: F401  # fedmodel.clients.app imports it from here

CARRY_KEY = "fedmodel-privacy-carry"
"""``context.state`` record: the owner's :class:`CarriedPrivacy` as JSON, its privacy state within the run."""


def restore_privacy(msg: Message, context: Context, owner: OwnerIdentity) -> OwnerPrivacyState:
    """The privacy state to train this message's round with; the round is saved as charged before its first step."""
    config = msg.content["config"]
    server_round = int(config["server-round"])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
    text = config.get(f"{HANDBACK_PREFIX}{owner.seed_id}") if owner.simulated else None
    handback = HandBack.from_json(str(text)) if text else None
    carried, pending = _carried(context, handback, server_round)
    return RoundPrivacy(carried, server_round, _digest(msg, owner), _before_first_step(context), pending=pending,
                        deterministic=owner.simulated)  # deployed: fresh noise, a repeat is charged


def _before_first_step(context: Context) -> Callable[[CarriedPrivacy], None]:
    """Where the round's charge goes before its first step: a deployed node's file (a crash after it keeps
    the charge). A simulated owner's Context lives only as long as the call, which stores the round once,
    after it, whatever happened (``keep_privacy``)."""
    if state_file(context) is None:
        return lambda record: None
    return lambda record: _store(context, record)


def _digest(msg: Message, owner: OwnerIdentity) -> str:
    """The round's digest; the owners of a cohort share one message and settings, so it is computed once."""
    return _DIGEST.get(msg, owner.config, lambda: round_digest(
        {k: v.numpy() for k, v in msg.content["arrays"].items()},  # type: ignore[union-attr]  # a message's "arrays" is an ArrayRecord
        [(k, v) for k, v in msg.content["config"].items() if not str(k).startswith(HANDBACK_PREFIX)],
        {k: v for k, v in owner.config.to_mapping().items() if k != "resume"},
    ))


_DIGEST: PerMessage[str] = PerMessage()


def keep_privacy(context: Context, state: OwnerPrivacyState) -> None:
    """After a round (or a release): keep what was really spent, in ``context.state`` and on a node's disk."""
    if isinstance(state, RoundPrivacy):
        _store(context, state.outcome())
        return
    carried = _known(context)
    record = CarriedPrivacy(state) if carried is None else CarriedPrivacy(state, carried.last_round,
                                                                          carried.last_digest, carried.before_last)
    _store(context, record)


def current_privacy(context: Context) -> OwnerPrivacyState:
    """What the owner has spent in this run so far (``context.state``, else a deployed node's record of the run
    on disk, so a restarted SuperNode's first release does not overwrite it; nothing yet: an empty state)."""
    found = _known(context)
    return OwnerPrivacyState() if found is None else found.state


def privacy_record(state: OwnerPrivacyState) -> ConfigRecord:
    """The owner's state for its reply: the coordinator checkpoints it and may hand it back after a crash."""
    plain = state.snapshot() if isinstance(state, RoundPrivacy) else state
    return ConfigRecord(plain.to_dict())


# ---------------------------------------------------------------------------------------------- internals
def _carried(context: Context, handback: HandBack | None, server_round: int) -> tuple[CarriedPrivacy, int]:
    found = _from_context(context)
    if found is not None:
        return found, 0
    path = state_file(context)
    if path is not None:
        return load_file(path) or CarriedPrivacy(OwnerPrivacyState()), 0
    if handback is not None:
        return handback.adopt(server_round)
    return CarriedPrivacy(OwnerPrivacyState()), 0


def _known(context: Context) -> CarriedPrivacy | None:
    found = _from_context(context)
    path = state_file(context) if found is None else None
    return load_file(path) if path is not None else found


def _from_context(context: Context) -> CarriedPrivacy | None:
    if CARRY_KEY in context.state:
        return CarriedPrivacy.from_dict(json.loads(str(context.state[CARRY_KEY]["json"])))
    return None


def _store(context: Context, record: CarriedPrivacy) -> None:
    """One record (a JSON string: Flower checks a list-valued record item by item, ~0.1 ms per owner)."""
    context.state[CARRY_KEY] = ConfigRecord({"json": json.dumps(record.to_dict(), sort_keys=True)})
    path = state_file(context)
    if path is not None:
        save_file(path, record)


def state_file(context: Context) -> Path | None:
    """A deployed node's record of this run (None in simulation or without a state folder)."""
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None or not settings.state_dir:
        return None
    run_id = str(context.run_config.get("run-id") or "") or f"flower-{context.run_id}"
    return Path(settings.state_dir) / "privacy-runs" / f"{run_id}.json"
