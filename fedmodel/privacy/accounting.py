"""Privacy accounting for one owner: noise calibration for a whole run and cumulative epsilon.

The state is plain numbers (the Opacus accountant history ``[(noise_multiplier, sample_rate,
steps), ...]``), so it serialises into Flower's ``context.state`` between rounds and, later, into
the owner's ledger across runs. Epsilon is always computed over the whole history: the total spent,
never one round's share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fedmodel.privacy import rdp

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class PrivacyPlan:
    """The planned DP-SGD schedule of one owner for a whole run."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    total_steps: int
    max_grad_norm: float
    delta: float
    budget_epsilon: float


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches per epoch of Opacus' Poisson loader: ``ceil(n / batch_size)``; sample rate is its inverse."""
    if num_examples < 1:
        raise ValueError("an owner needs at least one training example")
    return math.ceil(num_examples / batch_size)


def plan_for_owner(
    *, num_examples: int, batch_size: int, local_epochs: int, rounds: int, epsilon: float, delta: float,
    max_grad_norm: float, spent_before: tuple[tuple[float, float, int], ...] = (),
) -> PrivacyPlan:
    """Calibrate the noise multiplier once so that all planned steps of all rounds stay within epsilon.

    ``spent_before`` is what the owner already spent in this run on other mechanisms (the
    federated scaling statistics, as Gaussian-mechanism entries ``(sigma, 1.0, 1)``): DP-SGD is
    calibrated for what remains, so the composition of both stays within ``epsilon``.
    Calibration always returns the noisier end of its bracket, so the planned run's epsilon is
    at most the budget.
    """
    per_epoch = steps_per_epoch(num_examples, batch_size)
    sample_rate = 1.0 / per_epoch
    per_round = per_epoch * local_epochs
    total = per_round * rounds
    if spent_before:
        sigma = calibrate_noise_after(epsilon, delta, sample_rate, total, tuple(spent_before))
    else:
        sigma = calibrate_noise(epsilon, delta, sample_rate, total)
    return PrivacyPlan(sigma, sample_rate, per_round, total, max_grad_norm, delta, epsilon)


@lru_cache(maxsize=1024)
def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Smallest noise multiplier (to Opacus' tolerance, from the noisy side) keeping ``steps`` steps within epsilon.

    A pure function of its arguments, so it is computed once per process for every owner with the
    same sample rate and step count (about 2-3 s of RDP evaluations each time otherwise).
    """
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(
        target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
        accountant=ACCOUNTANT, epsilon_tolerance=0.01,
    ))


@lru_cache(maxsize=256)
def calibrate_noise_after(epsilon: float, delta: float, sample_rate: float, steps: int,
                          spent_before: tuple[tuple[float, float, int], ...]) -> float:
    """Smallest DP-SGD noise multiplier such that ``spent_before`` composed with ``steps`` steps stays within epsilon.

    Bisection on the noise multiplier over the composed RDP curve (Opacus' analysis functions),
    to within 0.01 of the budget, always keeping the noisier end. Raises PrivacyBudgetExceeded
    when ``spent_before`` alone already uses the whole budget.
    """
    from fedmodel.errors import PrivacyBudgetExceeded

    prefix = rdp_curve(spent_before)
    alone = _epsilon_of_rdp(prefix, delta)
    if alone >= epsilon:
        raise PrivacyBudgetExceeded("(this owner)", alone, alone, epsilon)

    def eps(sigma: float) -> float:
        return _epsilon_of_rdp(prefix + rdp_curve(((sigma, sample_rate, steps),)), delta)

    low, high = 0.0, 1.0
    while eps(high) > epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise PrivacyBudgetExceeded("(this owner)", alone, eps(high), epsilon)
    while eps(high) < epsilon - 0.01 and high - low > 1e-6:
        mid = (low + high) / 2
        if eps(mid) > epsilon:
            low = mid
        else:
            high = mid
    return high


def rdp_curve(history: tuple[tuple[float, float, int], ...] | list[tuple[float, float, int]]) -> Any:
    """The composed RDP curve of (noise_multiplier, sample_rate, steps) entries over Opacus' default orders.

    See :func:`fedmodel.privacy.rdp.compose`: cached one-step curves, the same numbers bit for bit as
    Opacus' ``RDPAccountant`` over the same history.
    """
    return rdp.compose(history)


def _epsilon_of_rdp(curve: Any, delta: float) -> float:
    return rdp.epsilon(curve, delta)


def gaussian_sum_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of one release of a sum with Gaussian noise ``noise_multiplier`` x its L2 sensitivity."""
    return epsilon_spent([(noise_multiplier, 1.0, 1)], delta)


def epsilon_spent(history: list[tuple[float, float, int]], delta: float) -> float:
    """Cumulative epsilon of a history of (noise_multiplier, sample_rate, steps) at ``delta``.

    Equal to Opacus' ``RDPAccountant(history).get_epsilon(delta)`` (tested), from cached one-step curves.
    """
    if not history:
        return 0.0
    return _epsilon_cached(tuple((float(sigma), float(q), int(steps)) for sigma, q, steps in history), float(delta))


@lru_cache(maxsize=4096)
def _epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Owners on one schedule share their histories: a cohort computes each distinct one once."""
    return _epsilon_of_rdp(rdp_curve(list(history)), delta)


@dataclass
class OwnerPrivacyState:
    """One owner's privacy state within a run: the plan (once calibrated) and what was spent so far.

    ``history`` holds the DP-SGD steps; ``other`` holds every other release charged to the owner
    (the federated scaling statistics, one Gaussian-mechanism entry ``(sigma, 1.0, 1)`` each).
    Epsilon is always the composition of both.
    """

    plan: PrivacyPlan | None = None
    history: list[tuple[float, float, int]] = field(default_factory=list)
    other: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """DP-SGD steps taken (or reserved) so far."""
        return sum(int(s) for _, _, s in self.history)

    @property
    def everything(self) -> list[tuple[float, float, int]]:
        """Every release charged to the owner, for epsilon: other mechanisms, then DP-SGD."""
        return list(self.other) + list(self.history)

    def epsilon(self, delta: float) -> float:
        """Total epsilon spent by this owner in the run so far."""
        return epsilon_spent(self.everything, delta)

    def charge_gaussian(self, noise_multiplier: float) -> None:
        """Charge one Gaussian-mechanism release (a noisy sum) before it is made."""
        self.other.append((float(noise_multiplier), 1.0, 1))

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` steps of DP-SGD to the history (merged with an identical last entry)."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, s = self.history[-1]
            self.history[-1] = (sigma, q, s + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def to_dict(self) -> dict[str, Any]:
        """Flat lists and scalars only (Flower ConfigRecord and JSON compatible)."""
        out: dict[str, Any] = {
            "sigma": [float(h[0]) for h in self.history],
            "q": [float(h[1]) for h in self.history],
            "steps": [int(h[2]) for h in self.history],
            "other-sigma": [float(h[0]) for h in self.other],
            "other-q": [float(h[1]) for h in self.other],
            "other-steps": [int(h[2]) for h in self.other],
        }
        if self.plan is not None:
            p = self.plan
            out.update({
                "plan-noise-multiplier": p.noise_multiplier, "plan-sample-rate": p.sample_rate,
                "plan-steps-per-round": p.steps_per_round, "plan-total-steps": p.total_steps,
                "plan-max-grad-norm": p.max_grad_norm, "plan-delta": p.delta, "plan-budget-epsilon": p.budget_epsilon,
            })
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OwnerPrivacyState:
        """Inverse of :meth:`to_dict`."""
        history = [(float(a), float(b), int(c)) for a, b, c in
                   zip(data.get("sigma", []), data.get("q", []), data.get("steps", []), strict=True)]
        other = [(float(a), float(b), int(c)) for a, b, c in
                 zip(data.get("other-sigma", []), data.get("other-q", []), data.get("other-steps", []), strict=True)]
        plan = None
        if "plan-noise-multiplier" in data:
            plan = PrivacyPlan(
                float(data["plan-noise-multiplier"]), float(data["plan-sample-rate"]),
                int(data["plan-steps-per-round"]), int(data["plan-total-steps"]),
                float(data["plan-max-grad-norm"]), float(data["plan-delta"]), float(data["plan-budget-epsilon"]),
            )
        return cls(plan=plan, history=history, other=other)
