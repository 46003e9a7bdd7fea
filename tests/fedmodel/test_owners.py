"""The one owner identity and ordering (:mod:`fedmodel.owners`), shared by the recorder and the strategy."""

from __future__ import annotations

import pytest

from fedmodel.owners import owner_in_reason, owner_order, sorted_owners


def test_numbers_sort_numerically_then_names_alphabetically() -> None:
    assert sorted_owners([10, "site-b", 2, "node 7", "site-a", 0]) == [0, 2, 10, "node 7", "site-a", "site-b"]


def test_the_strategy_aggregates_in_the_recorders_order() -> None:
    from fedmodel.server import strategy

    assert strategy._owner_order is owner_order


@pytest.mark.parametrize(("reason", "owner"), [
    ("owner 3: the privacy budget is used up", 3),
    ("owner site-a: refused by the owner's privacy policy (dp-required)", "site-a"),
    ("owner : nothing named", None),
    ("Node Unavailable", None),
    ("owner 12", 12),
])
def test_the_owner_named_at_the_start_of_an_error_reply(reason: str, owner: object) -> None:
    assert owner_in_reason(reason) == owner
