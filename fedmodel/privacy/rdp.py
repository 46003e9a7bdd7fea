"""RDP curves over Opacus' orders, cached: the one place both the run's accountant and the owner's ledger compose them.

RDP is linear in the number of steps, and Opacus' ``compute_rdp`` returns exactly ``steps x`` the
one-step curve, so the one-step curve is computed once per (sample rate, noise multiplier, orders)
per process and scaled. Composing entries in history order with :func:`add` gives the same
numbers, bit for bit, as Opacus' ``RDPAccountant`` over the same history, without re-evaluating the
fractional orders (about a second each time at large sample rates) on every owner call.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def default_orders() -> tuple[float, ...]:
    """Opacus' default RDP orders (``RDPAccountant.DEFAULT_ALPHAS``)."""
    from opacus.accountants.rdp import RDPAccountant

    return tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=4096)
def unit_rdp(sample_rate: float, noise_multiplier: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one step of the subsampled Gaussian mechanism at every order (float64, read-only)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders)),
                     dtype="<f8")
    rdp.setflags(write=False)
    return rdp


def add(rdp: np.ndarray, noise_multiplier: float, sample_rate: float, steps: int,
        orders: tuple[float, ...]) -> np.ndarray:
    """``rdp`` composed with ``steps`` steps at (``noise_multiplier``, ``sample_rate``): a new array."""
    return rdp + unit_rdp(float(sample_rate), float(noise_multiplier), orders) * steps


def compose(history: Iterable[tuple[float, float, int]], orders: tuple[float, ...] | None = None) -> np.ndarray:
    """The RDP curve of (noise_multiplier, sample_rate, steps) entries, composed in order from zero."""
    orders = default_orders() if orders is None else orders
    total = np.zeros(len(orders))
    for sigma, q, steps in history:
        total = add(total, sigma, q, steps, orders)
    return total


def epsilon(rdp: np.ndarray, delta: float, orders: tuple[float, ...] | None = None) -> float:
    """Opacus' RDP to (epsilon, delta) conversion, as ``RDPAccountant.get_epsilon`` does it."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    eps, _ = get_privacy_spent(orders=list(default_orders() if orders is None else orders), rdp=rdp, delta=delta)
    return float(eps)
