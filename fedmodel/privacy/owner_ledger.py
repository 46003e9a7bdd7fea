"""One owner's privacy across runs, as one run sees it: the ledger, the owner's policy, its audit trail.

The within-run accounting (:class:`~fedmodel.privacy.accounting.OwnerPrivacyState`, carried between
rounds by the app) says what this run spent; the ledger (:mod:`fedmodel.privacy.ledger`) is the truth
across runs. :class:`OwnerAccount` joins them:

* :meth:`OwnerAccount.plan` calibrates the run's DP-SGD noise once, on the first round, so that
  everything already in the owner's ledger composed with this run's plan stays within the owner's
  total budget (a later run gets more noise, not a refusal); it refuses when essentially nothing
  remains (:func:`min_useful_epsilon`) and checks the plan against the owner's policy;
* :meth:`OwnerAccount.reserve_round` reserves a round's planned steps in the ledger before training:
  they count as spent from then on, so a crash leaves them spent; :meth:`OwnerAccount.commit` marks
  them trained;
* each of these steps, and every refusal, is appended to the owner's audit log.

No Flower here: the ClientApp builds an account for each message from its Context.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedmodel.errors import BUDGET_RULE, LedgerError, PolicyViolation, PrivacyBudgetExceeded
from fedmodel.privacy.accounting import (
    ACCOUNTANT,
    OwnerPrivacyState,
    calibrate_noise_after,
    epsilon_spent,
    plan_for_owner,
)
from fedmodel.privacy.ledger import PrivacyLedger, Reservation, ledger_path, read_key
from fedmodel.privacy.mechanism import OpacusDPSGD
from fedmodel.privacy.policy import PrivacyPolicy
from fedmodel.security.audit_log import AuditLog, open_keyed, read_entries

AUDIT_LOG_NAME = "audit.log"
CALIBRATION_TOLERANCE = 0.01  # noise calibration lands at most this far below its target epsilon
MIN_REMAINING_FRACTION = 0.01
LEDGER_LOG_TOLERANCE = 1e-9  # the log's totals are the ledger's own floats, written as JSON (exact round trip)


def min_useful_epsilon(budget: float) -> float:
    """Below this much remaining budget a run is refused instead of training on (almost) pure noise.

    Twice the calibration tolerance, or 1% of the budget if that is more: a run calibrated to the
    whole budget leaves at most the tolerance, so the next run asking for the same budget is refused.
    """
    return max(2 * CALIBRATION_TOLERANCE, MIN_REMAINING_FRACTION * budget)


@dataclass(frozen=True)
class RunIdentity:
    """Who runs what: Flower's run id and the coordinator (its address and run folder, as far as known)."""

    run_id: str
    coordinator: str


@dataclass(frozen=True)
class DataFingerprint:
    """Which data a run touched: a file's name and SHA-256 (never its content), or a bundled data set's name."""

    name: str
    sha256: str | None = None
    detail: str = ""

    @classmethod
    def of_file(cls, path: Path, detail: str = "") -> DataFingerprint:
        stat = os.stat(path)
        return cls(Path(path).name, _sha256(str(Path(path).absolute()), stat.st_size, stat.st_mtime_ns), detail)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256}
        if self.detail:
            out["detail"] = self.detail
        return out


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, once per process for an unchanged file (many simulated owners share one)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def open_ledger(folder: str, key_file: str = "") -> PrivacyLedger:
    """The ledger in ``folder`` (created if absent), opened once per process; encrypted with ``key_file``'s key."""
    key = read_key(Path(key_file)) if key_file else None
    return PrivacyLedger(ledger_path(Path(folder)), key=key)


class OwnerAccount:
    """One owner's cross-run privacy for one run.

    Parameters
    ----------
    owner
        The owner's name in the ledger (a deployed owner's name, a simulated owner's partition number).
    run
        The run, as recorded in the ledger and the audit log.
    budget_epsilon
        The owner's total budget across every run (the node's ``budget-epsilon``; in a simulation the
        run's epsilon).
    policy
        The owner's rules for any run.
    ledger
        The owner's ledger; None keeps no account across runs (a simulation without ``--ledger``).
    audit
        The owner's audit log; None writes none.
    data
        The data the run trains on: its SHA-256 goes with each ledger entry (None: not recorded).
    """

    def __init__(self, owner: str, run: RunIdentity, *, budget_epsilon: float, policy: PrivacyPolicy,
                 ledger: PrivacyLedger | None = None, audit: AuditLog | None = None,
                 data: DataFingerprint | None = None) -> None:
        self.data = data
        self.owner = str(owner)
        self.run = run
        self.budget = float(budget_epsilon)
        self.policy = policy
        self.ledger = ledger
        self.audit = audit

    # ------------------------------------------------------------------ the run
    def start_run(self, data: DataFingerprint, **settings: Any) -> None:
        """Record who runs what on which data (once per run)."""
        self._audit("run-start", data=data.to_dict(), budget_epsilon=self.budget, policy=self.policy.to_dict(),
                    ledger=str(self.ledger.path) if self.ledger is not None else None, **settings)

    def check_run(self, *, dp: bool, secure_aggregation: bool) -> None:
        """Refuse a run that breaks a run-level rule of the owner's policy (PolicyViolation)."""
        self.policy.check_run(self.owner, dp=dp, secure_aggregation=secure_aggregation)

    def refused(self, exc: PrivacyBudgetExceeded | PolicyViolation) -> None:
        """Record a refusal and its reason."""
        rule = exc.rule if isinstance(exc, PolicyViolation) else BUDGET_RULE
        fields: dict[str, Any] = {"rule": rule, "reason": str(exc)}
        if isinstance(exc, PrivacyBudgetExceeded):
            fields.update(epsilon_spent=exc.spent, budget_epsilon=exc.budget, remaining_epsilon=exc.remaining)
        self._audit("refuse", **fields)

    # ------------------------------------------------------------------ DP-SGD
    def plan(self, state: OwnerPrivacyState, *, num_examples: int, batch_size: int, local_epochs: int, rounds: int,
             epsilon: float, delta: float, max_grad_norm: float,
             later: tuple[tuple[float, float, int], ...] = ()) -> None:
        """Calibrate ``state.plan`` once for the run (no-op when it is set), on what remains of the budget.

        ``later`` are releases the run will make after this plan (a node's DP evaluations, one per
        round, as accountant entries): DP-SGD is calibrated to leave room for them.

        The noise multiplier is the larger of two calibrations: this run within ``epsilon`` (with the
        run's other releases, ``state.other``), and everything in the ledger with this run within the
        owner's total budget, at the smallest delta of either. Raises PrivacyBudgetExceeded when less
        than :func:`min_useful_epsilon` remains, PolicyViolation when the plan breaks the policy; the
        plan is kept only when it passes.
        """
        if state.plan is not None:
            return
        other = tuple(state.other) + tuple(later)
        try:
            plan = plan_for_owner(num_examples=num_examples, batch_size=batch_size, local_epochs=local_epochs,
                                  rounds=rounds, epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm,
                                  spent_before=other)
        except PrivacyBudgetExceeded as exc:  # this run's other releases alone used its epsilon
            raise PrivacyBudgetExceeded(self.owner, exc.spent, exc.planned, exc.budget) from None
        before = tuple(self.ledger.history(self.owner)) if self.ledger is not None else ()
        spent_before = 0.0
        if before:  # this run's own earlier releases (state.other) are in the ledger already
            owner_delta = self.ledger.owner_delta(self.owner) if self.ledger is not None else None
            total_delta = delta if owner_delta is None else min(delta, owner_delta)
            spent_before = epsilon_spent(list(before), total_delta)
            remaining = self.budget - spent_before
            if remaining < min_useful_epsilon(self.budget):
                raise PrivacyBudgetExceeded(
                    self.owner, spent_before, spent_before, self.budget,
                    message=f"owner {self.owner}: the privacy budget is used up: epsilon {spent_before:.4f} of "
                            f"{self.budget:.4f} spent across runs (ledger), remaining {max(remaining, 0.0):.4f}, "
                            f"below the {min_useful_epsilon(self.budget):.4f} a run needs; nothing was trained")
            sigma = calibrate_noise_after(self.budget, total_delta, plan.sample_rate, plan.total_steps,
                                          before + tuple(later))
            if sigma > plan.noise_multiplier:
                plan = dataclasses.replace(plan, noise_multiplier=sigma)
        run_epsilon = epsilon_spent(list(other) + [(plan.noise_multiplier, plan.sample_rate, plan.total_steps)],
                                    delta)
        self.policy.check_plan(self.owner, noise_multiplier=plan.noise_multiplier, epsilon=run_epsilon,
                               what="DP-SGD")
        state.plan = plan
        self._audit("plan", noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
                    steps=plan.total_steps, rounds=rounds, delta=delta, epsilon_run=run_epsilon,
                    epsilon_before=spent_before, budget_epsilon=self.budget, accountant=ACCOUNTANT)

    def reserve_round(self, state: OwnerPrivacyState, server_round: int) -> Reservation | None:
        """Before training: the run's own check, then the round's planned steps reserved in the ledger.

        A replay (a simulated owner's seeded round with the same inputs, recognised by the carried
        state, see :mod:`fedmodel.privacy.run_privacy`) releases nothing new: its first attempt's
        reservation stands, and nothing is reserved again. A deployed node's round sent again has
        fresh noise: it is reserved as a new release (``what`` says it is a repeat). Raises
        PrivacyBudgetExceeded (nothing reserved) if the owner's total would pass its budget.
        """
        plan = state.plan
        if plan is None:
            raise ValueError("reserve_round needs a calibrated plan (call plan first)")
        if getattr(state, "replay", False):
            self._audit("replay", round=server_round)
            return None
        OpacusDPSGD(state, self.owner, noise_seed=None).check_budget()
        what = "dp-sgd, round sent again (fresh noise)" if getattr(state, "repeat", False) else "dp-sgd"
        return self._reserve(what, server_round, plan.noise_multiplier, plan.sample_rate, plan.steps_per_round,
                             plan.delta)

    # ------------------------------------------------------------------ other releases
    def reserve_release(self, what: str, noise_multiplier: float, delta: float) -> Reservation | None:
        """Before one Gaussian-mechanism release (a noisy sum): the policy, then the ledger."""
        cost = epsilon_spent([(noise_multiplier, 1.0, 1)], delta)
        self.policy.check_plan(self.owner, noise_multiplier=noise_multiplier, epsilon=cost, what=f"the {what}")
        return self._reserve(what, 0, noise_multiplier, 1.0, 1, delta)

    # ------------------------------------------------------------------ the ledger
    def _reserve(self, what: str, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
                 delta: float) -> Reservation | None:
        if self.ledger is None:
            return None
        reservation = self.ledger.reserve(self.owner, run_id=self.run.run_id, coordinator=self.run.coordinator,
                                          noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                                          delta=delta, budget_epsilon=self.budget,
                                          data=(self.data.sha256 or "") if self.data is not None else "")
        self._audit("reserve", what=what, round=server_round, entry=reservation.entry_id,
                    noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta,
                    epsilon_total=reservation.spent, budget_epsilon=self.budget,
                    remaining_epsilon=reservation.remaining)
        return reservation

    def commit(self, reservation: Reservation | None, **fields: Any) -> dict[str, float]:
        """After training or releasing: mark the reservation committed; the ledger's numbers for the reply.

        Without a reservation (a replay) the owner's total is read from the ledger.
        """
        if self.ledger is None:
            return {}
        if reservation is None:
            return {"ledger-epsilon": self.ledger.spent(self.owner), "ledger-budget": self.budget}
        self.ledger.commit(reservation)
        self._audit("commit", entry=reservation.entry_id, epsilon_total=reservation.spent,
                    budget_epsilon=self.budget, **fields)
        return {"ledger-epsilon": reservation.spent, "ledger-budget": self.budget}

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(event, owner=self.owner, run_id=self.run.run_id, coordinator=self.run.coordinator,
                              **fields)


def audit_log_for(folder: Path, key_file: str | Path = "") -> AuditLog:
    """The audit log of a node's state folder (or a simulation's ledger folder); keyed by ``key_file`` if given.

    A keyed log is also anchored: its head is copied beside the key (:func:`~fedmodel.security.audit_log.open_keyed`).
    """
    if key_file:
        return open_keyed(Path(folder) / AUDIT_LOG_NAME, Path(key_file))
    return AuditLog(Path(folder) / AUDIT_LOG_NAME)


def logged_spending(audit_file: Path, owner: str) -> float:
    """The largest total epsilon the audit log says ``owner`` had reserved or committed (0.0 if none or no log).

    Read without checking the chain (``fedmodel audit-log verify`` does that): the entries are a floor
    for what the ledger must hold, never a number to charge.
    """
    if not Path(audit_file).exists():
        return 0.0
    entries, _ = read_entries(Path(audit_file))
    totals = [float(e.fields["epsilon_total"]) for e in entries
              if e.event in ("reserve", "commit") and e.fields.get("owner") == owner
              and isinstance(e.fields.get("epsilon_total"), int | float)]
    return max(totals, default=0.0)


def check_ledger_against_log(ledger_file: Path, audit_file: Path, owner: str,
                             ledger: PrivacyLedger | None = None) -> None:
    """Refuse a ledger that holds less spending for ``owner`` than the audit log beside it shows.

    A deleted ledger would otherwise come back as a fresh budget, and an older copy put back as a larger
    one. ``ledger`` is the open ledger (None: read ``ledger_file`` if it exists, without creating it;
    an encrypted one must be passed open). Raises LedgerError naming both files and the logged epsilon.
    """
    logged = logged_spending(audit_file, owner)
    if logged <= 0.0:
        return
    if ledger is not None:
        held = ledger.spent(owner)
    elif Path(ledger_file).exists():
        with PrivacyLedger(Path(ledger_file), create=False) as opened:
            held = opened.spent(owner)
    else:
        held = -1.0
    state = {-1.0: "is missing", 0.0: "holds no entry of this owner"}.get(held, f"holds only epsilon {held:.4f}")
    if held + LEDGER_LOG_TOLERANCE < logged:
        raise LedgerError(
            f"owner {owner}: the privacy ledger {ledger_file} {state}, but the audit log {audit_file} shows epsilon "
            f"{logged:.4f} spent: the ledger was deleted, emptied or replaced by an older copy. Refusing to treat "
            "it as a fresh budget: put the ledger back (or start a new state folder and owner on purpose)")
