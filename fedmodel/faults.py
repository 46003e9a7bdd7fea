"""Injected owner faults: a testing aid for the coordinator's defences, never for real runs.

The run key ``inject-faults`` lists ``OWNER:FAULT`` items separated by commas, for example
``"3:signflip,4:scale10,5:nan,6:inf,7:shape,8:hang:30,9:crash"``. After training, each named owner
turns its honest update into a faulty one before replying:

=============  ==================================================================================
``signflip``   reflect the update around the global model: ``global - (update - global)``
``scaleK``     scale the update by the number K: ``global + K * (update - global)``
``nan``        fill the first floating-point array with NaN
``inf``        fill the first floating-point array with +infinity
``shape``      add a row of zeros to the first array (wrong shape)
``hang:S``     sleep S seconds, then reply honestly (a straggler)
``crash``      fail with an error reply, like ``inject-failure-owners`` (which fails before training)
``no-noise``   train DP-SGD with noise multiplier 0 while reporting the planned noise and epsilon: a
               privacy bug on purpose, for the empirical privacy audit (``--audit``) to catch
=============  ==================================================================================

Parsing needs no torch, so the run config can use it cheaply; applying imports torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fedmodel.errors import FedModelError

if TYPE_CHECKING:
    import torch

FaultKind = Literal["signflip", "scale", "nan", "inf", "shape", "hang", "crash", "no-noise"]
_PLAIN: tuple[FaultKind, ...] = ("signflip", "nan", "inf", "shape", "crash", "no-noise")
FAULT_SYNTAX = (
    "OWNER:signflip | OWNER:scaleK | OWNER:nan | OWNER:inf | OWNER:shape | OWNER:hang:SECONDS | OWNER:crash | "
    "OWNER:no-noise"
)


@dataclass(frozen=True)
class Fault:
    """One owner's injected fault; ``value`` is K for ``scale`` and the seconds for ``hang``."""

    owner: int
    kind: FaultKind
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse one ``OWNER:FAULT`` item; raise ValueError naming the item if malformed."""
        item = text.strip()
        owner_text, _, spec = item.partition(":")
        if not owner_text.strip().isdigit() or not spec:
            raise ValueError(f"{item!r}: expected {FAULT_SYNTAX}")
        owner = int(owner_text)
        kind, _, arg = spec.strip().partition(":")
        if kind in _PLAIN and not arg:
            return cls(owner, kind)
        if kind.startswith("scale") and not arg:
            return cls(owner, "scale", _number(item, kind[len("scale"):], "scale needs a factor, as in scale10"))
        if kind == "hang":
            seconds = _number(item, arg, "hang needs seconds, as in hang:30")
            if seconds <= 0:
                raise ValueError(f"{item!r}: hang seconds must be > 0")
            return cls(owner, "hang", seconds)
        raise ValueError(f"{item!r}: unknown fault; expected {FAULT_SYNTAX}")

    def __str__(self) -> str:
        if self.kind == "scale":
            return f"{self.owner}:scale{_format(self.value)}"
        if self.kind == "hang":
            return f"{self.owner}:hang:{_format(self.value)}"
        return f"{self.owner}:{self.kind}"


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse a comma-separated ``inject-faults`` value ("" = none); raise ValueError if malformed."""
    return tuple(Fault.parse(item) for item in text.split(",") if item.strip())


def fault_for(faults: tuple[Fault, ...], owner: int) -> Fault | None:
    """The fault injected at ``owner``, if any."""
    return next((f for f in faults if f.owner == owner), None)


def apply_fault(
    fault: Fault, update: Mapping[str, torch.Tensor], global_weights: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The faulty version of an owner's ``update`` of ``global_weights`` (new tensors; inputs unchanged).

    ``hang`` sleeps, then returns the update; ``crash`` raises FedModelError naming the owner;
    ``no-noise`` acts during training (:func:`fedmodel.owner.train_owner_round`), so the update is kept.
    """
    import torch

    out = {k: v.detach().clone() for k, v in update.items()}
    if fault.kind == "crash":
        raise FedModelError(f"owner {fault.owner}: injected crash (testing aid: inject-faults)")
    if fault.kind == "hang":
        time.sleep(float(fault.value or 0.0))
    elif fault.kind in ("signflip", "scale"):
        factor = -1.0 if fault.kind == "signflip" else float(fault.value or 0.0)
        for key, value in out.items():
            if value.is_floating_point():
                ref = global_weights[key].to(value.dtype)
                out[key] = ref + factor * (value - ref)
    elif fault.kind in ("nan", "inf"):
        key = next(k for k, v in out.items() if v.is_floating_point())
        out[key] = torch.full_like(out[key], math.nan if fault.kind == "nan" else math.inf)
    elif fault.kind == "shape":
        key = next(k for k, v in out.items() if v.dim() >= 1)
        out[key] = torch.cat([out[key], torch.zeros_like(out[key][:1])], dim=0)
    return out


def _number(item: str, text: str, hint: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{item!r}: {hint}") from None
    if not math.isfinite(value):
        raise ValueError(f"{item!r}: {hint} (a finite number)")
    return value


def _format(value: float | None) -> str:
    number = float(value or 0.0)
    return str(int(number)) if number.is_integer() else repr(number)
