"""Whether this train call runs inside the SecAgg+ masked-vector stage on this node.

Only Flower's SecAgg+ mod, run by this node (:func:`fedmodel.clients.secagg.secure_aggregation_mod`), enters
the stage (:func:`masked_stage`), after the setup and share-keys stages and just before the reply is
masked. Nothing in a message can set it: the owner's policy (:mod:`fedmodel.clients.privacy_account`) reads
the protocol observed, not what the coordinator declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from fedmodel.config import RunConfig

_MASKED_STAGE: ContextVar[bool] = ContextVar("fedmodel_secagg_masked_stage", default=False)


def masked_stage_active() -> bool:
    """True only inside the SecAgg+ masked-vector stage run by Flower's mod on this node."""
    return _MASKED_STAGE.get()


def secure_aggregation_in_effect(config: RunConfig) -> bool:
    """What the owner's policy checks: the protocol observed (train), else what the run declares (other messages).

    A train message of a run that declares secure aggregation is checked again by
    :func:`fedmodel.clients.secagg.require_masked_train`, so a coordinator that declares it but sends a plain
    train message gets a refusal, not an update.
    """
    return masked_stage_active() or config.secure_aggregation


@contextmanager
def masked_stage() -> Iterator[None]:
    """The masked-vector stage: :func:`masked_stage_active` is True inside (for this context only)."""
    token = _MASKED_STAGE.set(True)
    try:
        yield
    finally:
        _MASKED_STAGE.reset(token)
