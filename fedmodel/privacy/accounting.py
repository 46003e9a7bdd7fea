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
    max_grad_norm: float,
) -> PrivacyPlan:
    """Calibrate the noise multiplier once so that all planned steps of all rounds stay within epsilon.

    Opacus' ``get_noise_multiplier`` searches from above and returns the noisier end of its
    bracket, so the planned run's epsilon is at most the budget.
    """
    per_epoch = steps_per_epoch(num_examples, batch_size)
    sample_rate = 1.0 / per_epoch
    per_round = per_epoch * local_epochs
    total = per_round * rounds
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


def epsilon_spent(history: list[tuple[float, float, int]], delta: float) -> float:
    """Cumulative epsilon of a history of (noise_multiplier, sample_rate, steps) at ``delta``."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


@dataclass
class OwnerPrivacyState:
    """One owner's privacy state within a run: the plan (once calibrated) and the history so far."""

    plan: PrivacyPlan | None = None
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self.history)

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
        plan = None
        if "plan-noise-multiplier" in data:
            plan = PrivacyPlan(
                float(data["plan-noise-multiplier"]), float(data["plan-sample-rate"]),
                int(data["plan-steps-per-round"]), int(data["plan-total-steps"]),
                float(data["plan-max-grad-norm"]), float(data["plan-delta"]), float(data["plan-budget-epsilon"]),
            )
        return cls(plan=plan, history=history)
