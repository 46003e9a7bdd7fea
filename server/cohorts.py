"""Cohorts: simulated Flower nodes that each host many owners (DESIGN.md, "Simulation at scale").

With ``0 < nodes < clients`` the ``clients`` owners live on ``nodes`` Flower nodes: owner ``o`` on the
node whose ``partition-id`` is ``o % nodes``. Each round the coordinator chooses the owners (every one,
or ``owners-per-round`` of them drawn uniformly without replacement from a seed of the run and the
round) and puts the list in the config every node receives; each node trains those of its owners one
after another in its process (:mod:`fedmodel.clients.cohort`) and replies with one ArrayRecord and MetricRecord
per owner. :func:`split_replies` turns such a reply back into one reply per owner, so screening,
recording and aggregation see owners exactly as when each owner has a node of its own: the owner, not
the Flower node, is the unit of sampling, privacy accounting and reporting.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.common.constant import ErrorCode

from fedmodel.config import RunConfig
from fedmodel.protocol import COHORT_ERRORS_KEY, COHORT_KEY, COHORT_SEPARATOR


def round_owners(config: RunConfig, server_round: int) -> list[int]:
    """The owners a round asks for: all ``clients``, or ``owners-per-round`` drawn from them (sorted).

    The draw depends on the run's seed and the round only, so a re-run of a round asks the same owners.
    """
    if not config.owners_per_round or config.owners_per_round >= config.clients:
        return list(range(config.clients))
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xC0407, server_round]))
    return sorted(int(o) for o in rng.choice(config.clients, config.owners_per_round, replace=False))


def round_config(config: RunConfig, record: ConfigRecord, server_round: int) -> ConfigRecord:
    """The train or evaluate config a round sends: with cohorts, a copy naming the owners asked this round."""
    if not config.cohorts:
        return record
    return ConfigRecord({**record, COHORT_KEY: round_owners(config, server_round)})


def owner_replies(config: RunConfig, replies: list[Message]) -> list[Message]:
    """One reply per owner: with cohorts, each node's reply split by owner (:func:`split_replies`)."""
    return split_replies(replies) if config.cohorts else replies


def split_replies(replies: list[Message]) -> list[Message]:
    """Each node's cohort reply as one reply per owner (owner order); an error reply stays as it is.

    A failed owner becomes an error reply whose reason names it (``owner 17: ...``), as a node of its
    own would send.
    """
    out: list[Message] = []
    for reply in replies:
        if reply.has_error():
            out.append(reply)
            continue
        per_owner: dict[int, RecordDict] = {}
        errors: dict[int, str] = {}
        for key, record in reply.content.items():
            if key == COHORT_ERRORS_KEY:
                errors.update({int(o): str(reason) for o, reason in record.items()})
                continue
            name, sep, owner = key.rpartition(COHORT_SEPARATOR)
            if not sep or not owner.isdigit():
                raise ValueError(f"node {reply.metadata.src_node_id}: cohort reply record {key!r} names no owner")
            per_owner.setdefault(int(owner), RecordDict())[name] = record
        for owner in sorted(set(per_owner) | set(errors)):  # type: ignore[assignment]  # owner is the str suffix here, an int in the loop below
            if owner in errors:
                out.append(make_message(metadata=reply.metadata,
                                        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=errors[owner])))  # type: ignore[index]  # owner is an int in this loop
            else:
                out.append(make_message(metadata=reply.metadata, content=per_owner[owner]))  # type: ignore[index]  # owner is an int in this loop
    return out
