"""Privacy: Opacus wrapping, noise calibration for a whole budget, cumulative per-owner accounting."""

from fedmodel.privacy.accounting import (
    ACCOUNTANT,
    OwnerPrivacyState,
    PrivacyPlan,
    epsilon_spent,
    plan_for_owner,
    steps_per_epoch,
)
from fedmodel.privacy.mechanism import NoPrivacy, OpacusDPSGD, PrivacyMechanism

__all__ = [
    "ACCOUNTANT", "NoPrivacy", "OpacusDPSGD", "OwnerPrivacyState", "PrivacyMechanism", "PrivacyPlan",
    "epsilon_spent", "plan_for_owner", "steps_per_epoch",
]
