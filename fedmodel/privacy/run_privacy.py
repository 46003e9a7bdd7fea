"""An owner's privacy state carried across crashes and resumes: charged before training, never twice.

Within a run an owner's :class:`~fedmodel.privacy.OwnerPrivacyState` grows by one round of DP-SGD
steps each time it trains. When processes die two things can go wrong:

* the round in flight is **forgotten**: the owner trained (its update may have left), then its state
  died with the process before it was saved;
* a round is **counted twice**: a resumed or retried run sends the same round again.

:class:`RoundPrivacy` is the state an owner trains one round with. The moment DP-SGD reserves the
round's steps (before the first step), it hands the record *with the round charged* to a save
function, so a crash at any later point leaves the round counted. In a simulation it also recognises
a **replay**: the same round with the same inputs (global model, round config and the owner's run
settings, see :func:`round_digest`). A simulated owner's DP-SGD is seeded per (run seed, owner,
round) for Poisson sampling and noise, so a replay computes exactly the update the first attempt
computed; sending the same output again releases nothing new, and the round stays charged once.
Different inputs are a new release and are charged again.

A deployed node draws its noise and sampling from the OS CSPRNG (:mod:`fedmodel.privacy.randomness`):
a round sent again gets fresh noise, a second independent release of the same round (averaging the
two would halve the noise's variance), so it is never a replay there (``deterministic`` False): it is
charged as a new round, in the run's state and in the ledger.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmodel.errors import FedModelError
from fedmodel.fsio import atomic_write
from fedmodel.privacy.accounting import OwnerPrivacyState

FORMAT = "fedmodel-owner-privacy"
VERSION = 1


@dataclass(frozen=True)
class CarriedPrivacy:
    """An owner's state in one run and what its last charged round was given.

    Attributes
    ----------
    state : OwnerPrivacyState
        Everything charged so far, the last round included.
    last_round : int
        The last round charged that a replay may match (0: none).
    last_digest : str
        :func:`round_digest` of that round's inputs; "" matches any inputs of that round (only the
        simulation's own coordinator, a trusted source, hands such a record back).
    before_last : OwnerPrivacyState or None
        The state before the last round was charged: what a replay trains from.
    """

    state: OwnerPrivacyState
    last_round: int = 0
    last_digest: str = ""
    before_last: OwnerPrivacyState | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible."""
        return {
            "format": FORMAT, "version": VERSION, "state": self.state.to_dict(), "last-round": self.last_round,
            "last-digest": self.last_digest,
            "before-last": None if self.before_last is None else self.before_last.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CarriedPrivacy:
        """Inverse of :meth:`to_dict`; ValueError saying what is wrong."""
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} record")
        try:
            last_round = data.get("last-round", 0)
            if isinstance(last_round, bool) or not isinstance(last_round, int) or last_round < 0:
                raise ValueError(f"last-round = {last_round!r}")
            before = data.get("before-last")
            return cls(OwnerPrivacyState.from_dict(dict(data["state"])), last_round, str(data.get("last-digest", "")),
                       None if before is None else OwnerPrivacyState.from_dict(dict(before)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed {FORMAT} record ({exc})") from None


SaveFn = Callable[[CarriedPrivacy], None]


class RoundPrivacy(OwnerPrivacyState):
    """The state one owner trains round ``server_round`` with.

    Behaves as an :class:`OwnerPrivacyState` (Opacus' wrapper and the ledger see no difference).
    Its :meth:`record`, which DP-SGD calls once before training to reserve the round's steps, first
    adds ``pending`` earlier rounds (rounds a crashed coordinator could not tell were trained), then
    the round, then calls ``save`` with the record to keep: so the round is on disk before any step.
    On a replay it trains from the state before the round and saves nothing new. Only a
    ``deterministic`` round (seeded noise: a simulation) can be a replay; otherwise ``repeat`` tells that
    the round was charged before and is charged again.
    """

    def __init__(self, carried: CarriedPrivacy, server_round: int, digest: str, save: SaveFn, *,
                 pending: int = 0, deterministic: bool = True) -> None:
        self.repeat = carried.last_round == server_round and carried.before_last is not None
        self.replay = self.repeat and deterministic and carried.last_digest in ("", digest)
        base = carried.before_last if self.replay and carried.before_last is not None else carried.state
        super().__init__(plan=base.plan, history=list(base.history), other=list(base.other))
        self.server_round, self.digest = server_round, digest
        self._carried, self._save, self._pending, self._recorded = carried, save, 0 if self.replay else pending, False

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        for _ in range(self._pending):
            super().record(noise_multiplier, sample_rate, steps)
        self._pending = 0
        before = self.snapshot()
        super().record(noise_multiplier, sample_rate, steps)
        self._recorded = True
        if not self.replay:
            self._carried = CarriedPrivacy(self.snapshot(), self.server_round, self.digest, before)
            self._save(self._carried)

    def snapshot(self) -> OwnerPrivacyState:
        """A plain copy of the state as it is now."""
        return OwnerPrivacyState(plan=self.plan, history=list(self.history), other=list(self.other))

    def outcome(self) -> CarriedPrivacy:
        """After the attempt, what to keep: a replay keeps its charge; a round refused before any step, none."""
        c = self._carried
        if self.replay:
            return CarriedPrivacy(c.state, c.last_round, c.last_digest or self.digest, c.before_last)
        if self._recorded:
            return c
        return CarriedPrivacy(self.snapshot())  # refused before the first step: nothing spent, nothing to replay


def charge_rounds(state: OwnerPrivacyState, rounds: int) -> OwnerPrivacyState:
    """A copy of ``state`` with ``rounds`` more rounds of its plan's steps; the plan must be set."""
    if state.plan is None:
        raise ValueError("cannot charge a round without a calibrated privacy plan")
    out = copy.deepcopy(state)
    for _ in range(rounds):
        out.record(state.plan.noise_multiplier, state.plan.sample_rate, state.plan.steps_per_round)
    return out


# ---------------------------------------------------------------------------------------------- hand-back
@dataclass(frozen=True)
class HandBack:
    """What a resumed simulation's coordinator gives back to one simulated owner whose state died.

    ``state`` is the owner's state as it last reported it; ``unreported_rounds`` the rounds it may
    have trained since (every round up to the one in flight at the crash, ``in_flight_round``).
    """

    state: OwnerPrivacyState
    unreported_rounds: int
    in_flight_round: int

    def to_json(self) -> str:
        return json.dumps({"state": self.state.to_dict(), "unreported-rounds": self.unreported_rounds,
                           "in-flight-round": self.in_flight_round}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HandBack:
        data = json.loads(text)
        return cls(OwnerPrivacyState.from_dict(data["state"]), int(data["unreported-rounds"]),
                   int(data["in-flight-round"]))

    def adopt(self, server_round: int) -> tuple[CarriedPrivacy, int]:
        """(record, pending rounds) for an owner whose first message after the resume is ``server_round``.

        With a plan the unreported rounds are charged at once and the in-flight round may be replayed;
        without one (the owner never trained) they are charged when it next trains, less the
        in-flight round if that is the round it trains now (a replay).
        """
        n = max(self.unreported_rounds, 0)
        if n == 0:
            return CarriedPrivacy(copy.deepcopy(self.state)), 0
        if self.state.plan is None:
            return CarriedPrivacy(copy.deepcopy(self.state)), n - (1 if server_round == self.in_flight_round else 0)
        before = charge_rounds(self.state, n - 1)
        return CarriedPrivacy(charge_rounds(before, 1), self.in_flight_round, "", before), 0


# ---------------------------------------------------------------------------------------------- files
def save_file(path: Path, carried: CarriedPrivacy) -> None:
    """Write a node's record atomically (temporary file, fsync, rename)."""
    try:
        atomic_write(path, json.dumps(carried.to_dict(), indent=1, sort_keys=True).encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise FedModelError(f"{path}: cannot save the owner's privacy state ({exc.strerror or exc})") from None


def load_file(path: Path) -> CarriedPrivacy | None:
    """A node's record, None if there is none; FedModelError naming the file when it is damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FedModelError(f"{path}: cannot read the owner's privacy state ({exc.strerror or exc})") from None
    try:
        return CarriedPrivacy.from_dict(json.loads(text))
    except ValueError as exc:
        raise FedModelError(f"{path}: damaged privacy state, refusing to train rather than forget what was "
                            f"spent ({exc})") from None


# ---------------------------------------------------------------------------------------------- digest
def round_digest(arrays: Mapping[str, Any], config: Iterable[tuple[str, Any]], settings: Mapping[str, Any]) -> str:
    """SHA-256 of a round's inputs: the global model's arrays, the round config and the owner's run settings."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(np.asarray(arrays[name]))
        h.update(json.dumps([name, str(value.dtype), list(value.shape)]).encode())
        h.update(value.tobytes())
    h.update(json.dumps(sorted((str(k), _plain(v)) for k, v in config)).encode())
    h.update(json.dumps({str(k): _plain(v) for k, v in settings.items()}, sort_keys=True).encode())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return repr(value)
    return value
