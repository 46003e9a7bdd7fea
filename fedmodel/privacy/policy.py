"""The data owner's privacy policy: the rules a run must meet before the owner's data is touched.

The policy is set at the node (``fedmodel node start``) and never by the coordinator. A run that
breaks a rule gets a :class:`~fedmodel.errors.PolicyViolation` naming the rule, and nothing is
trained or released. The run-level rules (DP, secure aggregation) are checked on every message; the
plan-level rules (noise multiplier, epsilon of the run) once the plan is known, which for DP-SGD is
after calibration on the first round, before anything is reserved or trained.

Two rules guard what a deployed node takes from the coordinator before any data is read: the run's
keys must be on the node's allow-list (:data:`fedmodel.config.DEPLOYED_RUN_KEYS`, rule ``run-config``),
and cleaning or scaling may not use statistics of the owner's own rows (rule ``local-statistics``)
unless the owner allows it: one record would move every other row, outside DP-SGD's record-level
guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedmodel.config.run import refused_run_keys  # the module, not the package (whose NodeSettings uses this one)
from fedmodel.errors import PolicyViolation

RULE_DP_REQUIRED = "dp-required"
RULE_MIN_NOISE_MULTIPLIER = "min-noise-multiplier"
RULE_MAX_EPSILON_PER_RUN = "max-epsilon-per-run"
RULE_SECURE_AGGREGATION = "require-secure-aggregation"
RULE_RUN_CONFIG = "run-config"
RULE_LOCAL_STATISTICS = "local-statistics"
RULES = (RULE_DP_REQUIRED, RULE_MIN_NOISE_MULTIPLIER, RULE_MAX_EPSILON_PER_RUN, RULE_SECURE_AGGREGATION,
         RULE_RUN_CONFIG, RULE_LOCAL_STATISTICS)


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a run must promise an owner.

    Parameters
    ----------
    dp_required
        Refuse runs without DP (the default; ``--allow-no-dp`` turns it off).
    min_noise_multiplier
        Refuse a plan whose noise multiplier is below this (0 = no minimum).
    max_epsilon_per_run
        Refuse a run whose plan would spend more epsilon on this owner (None = no limit).
    require_secure_aggregation
        Refuse runs that do not declare secure aggregation; train only inside Flower's SecAgg+
        protocol (the ClientApp passes what it observed, :mod:`fedmodel.clients.secagg`).
    allow_local_statistics
        Accept cleaning and scaling computed from the owner's own rows (local quartiles, means,
        medians, modes, z-score or min-max statistics); refused by default (``--allow-local-statistics``).
    """

    dp_required: bool = True
    min_noise_multiplier: float = 0.0
    max_epsilon_per_run: float | None = None
    require_secure_aggregation: bool = False
    allow_local_statistics: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            raise ValueError(f"min_noise_multiplier must be a finite number >= 0, got {self.min_noise_multiplier!r}")
        cap = self.max_epsilon_per_run
        if cap is not None and not (math.isfinite(cap) and cap > 0):
            raise ValueError(f"max_epsilon_per_run must be a finite number > 0 or None, got {cap!r}")

    @classmethod
    def rehearsal(cls) -> PrivacyPolicy:
        """A simulation's owners: the researcher sets the privacy of the run, ``--no-dp`` ablations included."""
        return cls(dp_required=False)

    def check_run(self, owner: int | str, *, dp: bool, secure_aggregation: bool) -> None:
        """Refuse a run that breaks a run-level rule (raises PolicyViolation)."""
        if self.dp_required and not dp:
            raise PolicyViolation(owner, RULE_DP_REQUIRED, "the run has dp = false and this node trains only with DP "
                                                           "(the owner may start the node with --allow-no-dp)")
        if self.require_secure_aggregation and not secure_aggregation:
            raise PolicyViolation(owner, RULE_SECURE_AGGREGATION,
                                  "the run does not declare secure aggregation, which this node requires")

    def check_plan(self, owner: int | str, *, noise_multiplier: float, epsilon: float, what: str) -> None:
        """Refuse a plan (``what``: "DP-SGD", "the scaling statistics") that breaks a plan-level rule."""
        if noise_multiplier < self.min_noise_multiplier:
            raise PolicyViolation(owner, RULE_MIN_NOISE_MULTIPLIER,
                                  f"{what} would use noise multiplier {noise_multiplier:.4g}, below the minimum "
                                  f"{self.min_noise_multiplier:g}")
        if self.max_epsilon_per_run is not None and epsilon > self.max_epsilon_per_run:
            raise PolicyViolation(owner, RULE_MAX_EPSILON_PER_RUN,
                                  f"{what} would spend epsilon {epsilon:.4f} in this run, above the maximum "
                                  f"{self.max_epsilon_per_run:g} per run")

    def check_local_statistics(self, owner: int | str, uses: Sequence[str]) -> None:
        """Refuse cleaning that would use the owner's own statistics (``uses`` names each option) unless allowed."""
        if uses and not self.allow_local_statistics:
            raise PolicyViolation(owner, RULE_LOCAL_STATISTICS,
                                  f"{'; '.join(uses)}: computed from this owner's own rows, one record would move "
                                  "every other row, outside DP-SGD's record-level guarantee (the owner may start "
                                  "the node with --allow-local-statistics)")

    def describe(self) -> str:
        """One line for the node's start-up banner and the audit log."""
        parts = ["DP required" if self.dp_required else "runs without DP allowed"]
        if self.min_noise_multiplier > 0:
            parts.append(f"noise multiplier >= {self.min_noise_multiplier:g}")
        if self.max_epsilon_per_run is not None:
            parts.append(f"epsilon <= {self.max_epsilon_per_run:g} per run")
        if self.require_secure_aggregation:
            parts.append("secure aggregation required")
        if self.allow_local_statistics:
            parts.append("cleaning with local statistics allowed")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Plain values (JSON, audit log)."""
        return {RULE_DP_REQUIRED: self.dp_required, RULE_MIN_NOISE_MULTIPLIER: self.min_noise_multiplier,
                RULE_MAX_EPSILON_PER_RUN: self.max_epsilon_per_run,
                RULE_SECURE_AGGREGATION: self.require_secure_aggregation,
                "allow-local-statistics": self.allow_local_statistics}


def check_run_config(owner: int | str, values: Mapping[str, Any]) -> None:
    """Refuse a run whose config a deployed node may not take (PolicyViolation naming every refused key).

    Checked on the raw run config before it is parsed or any data is read; see
    :func:`fedmodel.config.run.refused_run_keys` for the allow-list and why each key is refused.
    """
    refused = refused_run_keys(values)
    if refused:
        raise PolicyViolation(owner, RULE_RUN_CONFIG, "; ".join(f"{k} {why}" if why.startswith("=") else f"{k}: {why}"
                                                                for k, why in sorted(refused.items())))
