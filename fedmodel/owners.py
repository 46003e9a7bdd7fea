"""Who an owner is, and the one order owners are listed and aggregated in.

A simulated owner is its partition number (``int``); a deployed owner is its name (``str``): the
coordinator's registry name of its node, or the name its reply gives. A node never heard from is
named ``"node <id>"`` (a ``str``) where a list of owners must mention it (``timed_out``).

:func:`owner_order` is the single ordering: numbers numerically, then names alphabetically. The
recorder sorts every owner list of the report with it and the strategy sorts replies with it
before aggregating (so a sum never depends on arrival order).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["OwnerId", "owner_in_reason", "owner_order", "sorted_owners"]

OwnerId = int | str
"""An owner: a simulated owner's partition number or a deployed owner's name."""



def owner_order(owner: OwnerId) -> tuple[int, int | str]:
    """The sort key of an owner: numbers first, in numeric order, then names in alphabetical order.

    Parameters
    ----------
    owner : OwnerId
        A partition number or a name.

    Returns
    -------
    tuple[int, int | str]
        ``(0, number)`` or ``(1, name)``.
    """
    return (0, owner) if isinstance(owner, int) else (1, owner)


def sorted_owners(owners: Iterable[OwnerId]) -> list[OwnerId]:
    """``owners`` in :func:`owner_order`.

    Parameters
    ----------
    owners : Iterable[OwnerId]
        Owners, in any order.

    Returns
    -------
    list[OwnerId]
        The same owners, sorted.
    """
    return sorted(owners, key=owner_order)


def owner_in_reason(reason: str) -> OwnerId | None:
    """The owner a ClientApp's error reply names (``"owner 3: ..."`` or ``"owner site-a: ..."``), if any.

    A Flower error reply carries only a code and this text, and a simulated node trains a cohort of
    owners, so the text is the only place that says which owner of the node failed: the ClientApp
    and the strategy's screening start their reasons with ``owner <id>:``. This is the one parser
    of that prefix.

    Parameters
    ----------
    reason : str
        The error reply's reason.

    Returns
    -------
    OwnerId | None
        The owner (a number when the name is all digits), or None when the text names none.
    """
    head = reason.split(":", 1)[0].strip()
    if not head.startswith("owner ") or not head[6:]:
        return None
    name = head[6:]
    return int(name) if name.isdigit() else name
