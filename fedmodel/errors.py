"""The one small error hierarchy of fedmodel.

Every error a user can cause is a :class:`FedModelError`; the CLI prints its message and exits
with :attr:`FedModelError.exit_code`, never a traceback.
"""

from __future__ import annotations


class FedModelError(Exception):
    """Base class of every error fedmodel raises on purpose."""

    exit_code: int = 1


class ConfigError(FedModelError):
    """One or more configuration values are invalid (all of them are listed)."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"invalid configuration: {self.problems[0]}"
        else:
            text = "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class DataValidationError(FedModelError):
    """A data file cannot be used; the message names the file, row and field.

    The message is for the owner (``fedmodel data check``, the node's log) and may quote a cell's
    value; :attr:`public_message` is what a deployed node sends the coordinator: file, row and column,
    never a value. A message that quotes a value passes ``public`` without it.
    """

    exit_code = 2

    def __init__(self, message: str, *, public: str | None = None) -> None:
        super().__init__(message)
        self.public_message = message if public is None else public


class DeviceError(FedModelError):
    """The requested compute device does not exist on this machine."""

    exit_code = 2


class DeploymentError(FedModelError):
    """The coordinator or a site cannot be started or changed; the message names the file, value or command."""

    exit_code = 2


class PrivacyBudgetExceeded(FedModelError):
    """Training would take an owner past its privacy budget; nothing was trained."""

    def __init__(self, owner: int | str, spent: float, planned: float, budget: float, *,
                 message: str | None = None) -> None:
        self.owner, self.spent, self.planned, self.budget = owner, spent, planned, budget
        self.remaining = max(budget - spent, 0.0)
        super().__init__(message or (
            f"owner {owner}: training this round would spend epsilon {planned:.4f} in total, above "
            f"the budget {budget:.4f} (spent so far {spent:.4f}, remaining {self.remaining:.4f})"
        ))


class PolicyViolation(FedModelError):
    """A run asks for less privacy than the data owner's policy allows; nothing was trained or released."""

    def __init__(self, owner: int | str, rule: str, detail: str) -> None:
        self.owner, self.rule, self.detail = owner, rule, detail
        super().__init__(f"owner {owner}: refused by the owner's privacy policy ({rule}): {detail}")


BUDGET_RULE = "budget"
"""The rule a PrivacyBudgetExceeded refusal breaks, as :func:`refusal_rule` names it."""


def refusal_rule(reason: str) -> str | None:
    """The rule an owner's error reply was refused under (a policy rule, or ``budget``); None if not a refusal.

    Reads the messages of :class:`PrivacyBudgetExceeded` and :class:`PolicyViolation` (their only parser).
    """
    import re

    policy = re.search(r"refused by the owner's privacy policy \(([a-z-]+)\)", reason)
    if policy is not None:
        return policy.group(1)
    if "above the budget" in reason or "privacy budget is used up" in reason:
        return BUDGET_RULE
    return None


class CheckpointError(FedModelError):
    """A checkpoint cannot be written or is missing, incomplete or damaged; the message names the file."""

    exit_code = 2


class LedgerError(FedModelError):
    """The privacy ledger cannot be opened or read: missing, not a ledger, damaged, or the wrong key."""

    exit_code = 2


class SimulationError(FedModelError):
    """A simulation run did not finish successfully; the message says why."""


class AllClientsFailedError(FedModelError):
    """Every owner sampled in a round failed, so the round has nothing to aggregate."""


class BelowMinimumError(FedModelError):
    """A round got fewer valid replies (or connected nodes) than ``min-clients``; nothing was aggregated."""
