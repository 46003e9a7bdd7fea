"""Tests of :mod:`fedmodel.privacy.rdp`: one RDP-curve cache, and the accountant and the ledger agree bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from fedmodel.privacy import rdp
from fedmodel.privacy.accounting import epsilon_spent, rdp_curve
from fedmodel.privacy.ledger import PrivacyLedger

HISTORIES = [
    [(1.1, 0.01, 100)],
    [(0.8, 0.25, 3), (1.3, 0.05, 40), (0.8, 0.25, 7)],
    [(2.0, 1.0, 1), (1.0, 1 / 3, 30), (1.0, 1 / 3, 30)],
]


@pytest.mark.parametrize("history", HISTORIES)
def test_composed_curve_equals_opacus_bit_for_bit(history: list[tuple[float, float, int]]) -> None:
    orders = list(RDPAccountant.DEFAULT_ALPHAS)
    expected = sum(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
                   for sigma, q, steps in history)
    assert np.array_equal(rdp.compose(history), expected)
    accountant = RDPAccountant()
    accountant.history = list(history)
    assert rdp.epsilon(rdp.compose(history), 1e-5) == accountant.get_epsilon(delta=1e-5)


def test_unit_curve_is_cached_and_read_only() -> None:
    rdp.unit_rdp.cache_clear()
    first = rdp.unit_rdp(0.1, 1.2, rdp.default_orders())
    assert rdp.unit_rdp(0.1, 1.2, rdp.default_orders()) is first
    assert rdp.unit_rdp.cache_info().hits == 1
    with pytest.raises(ValueError):
        first[0] = 0.0


@pytest.mark.parametrize("history", HISTORIES)
def test_accountant_and_ledger_agree_bit_for_bit(tmp_path: Path, history: list[tuple[float, float, int]]) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        for i, (sigma, q, steps) in enumerate(history):
            ledger.reserve("alice", run_id=f"run-{i}", coordinator="c", noise_multiplier=sigma, sample_rate=q,
                           steps=steps, delta=1e-5, budget_epsilon=1e6)
        assert ledger.spent("alice") == epsilon_spent(history, 1e-5)
    assert rdp_curve(history).tobytes() == rdp.compose(history).tobytes()
