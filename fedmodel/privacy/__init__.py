"""Privacy: Opacus wrapping, noise calibration for a whole budget, cumulative per-owner accounting.

The mechanisms (torch, Opacus) load on first use, so the accounting and the ledger import without torch.
"""

from typing import TYPE_CHECKING, Any

from fedmodel.privacy.accounting import (
    ACCOUNTANT,
    OwnerPrivacyState,
    PrivacyPlan,
    epsilon_spent,
    plan_for_owner,
    steps_per_epoch,
)

if TYPE_CHECKING:
    from fedmodel.privacy.mechanism import NoPrivacy, OpacusDPSGD, PrivacyMechanism

__all__ = [
    "ACCOUNTANT", "NoPrivacy", "OpacusDPSGD", "OwnerPrivacyState", "PrivacyMechanism", "PrivacyPlan",
    "epsilon_spent", "plan_for_owner", "steps_per_epoch",
]


def __getattr__(name: str) -> Any:
    if name in ("NoPrivacy", "OpacusDPSGD", "PrivacyMechanism"):
        from fedmodel.privacy import mechanism

        return getattr(mechanism, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
