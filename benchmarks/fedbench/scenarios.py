"""The benchmark scenarios of issue 6, the run config they share and what cannot run yet."""

from __future__ import annotations

from dataclasses import dataclass

from fedmodel.config import RunConfig

FEDMODEL_DP = "fedmodel DP"
FEDMODEL_NO_DP = "fedmodel no DP"
REFERENCE = "reference (Flower + Opacus)"
VARIANTS: tuple[str, ...] = (FEDMODEL_DP, FEDMODEL_NO_DP, REFERENCE)


@dataclass(frozen=True)
class Scenario:
    """``owners`` registered owners, ``sampled`` of them training each of ``rounds`` rounds."""

    name: str
    owners: int
    rounds: int
    sampled: int

    @property
    def all_train(self) -> bool:
        return self.sampled >= self.owners

    def describe(self) -> str:
        who = "all training" if self.all_train else f"{self.sampled} sampled per round"
        return f"{self.owners:,} owners x {self.rounds} rounds, {who}"


SCENARIOS: dict[str, Scenario] = {
    "small": Scenario("small", owners=10, rounds=5, sampled=10),
    "thousand": Scenario("thousand", owners=1000, rounds=3, sampled=1000),
    "million": Scenario("million", owners=1_000_000, rounds=3, sampled=10),
}


def scenario(name: str, *, owners: int | None = None, rounds: int | None = None) -> Scenario:
    """The preset ``name``, with the owner count or rounds changed (the sampled count follows)."""
    if name not in SCENARIOS:
        raise ValueError(f"--scenario {name!r}: expected one of {', '.join(SCENARIOS)}")
    base = SCENARIOS[name]
    if owners is not None and owners < 1 or rounds is not None and rounds < 1:
        raise ValueError(f"--owners {owners} --rounds {rounds}: expected integers >= 1")
    n = base.owners if owners is None else owners
    sampled = n if base.all_train else min(base.sampled, n)
    return Scenario(base.name, n, base.rounds if rounds is None else rounds, sampled)


def run_config(s: Scenario, *, dp: bool = True) -> RunConfig:
    """The run all three variants train: fedmodel's defaults (digits, IID, logreg, epsilon 3) at this size."""
    return RunConfig(clients=s.owners, rounds=s.rounds, dp=dp, device="cpu")


def unsupported(s: Scenario, variant: str, training_rows: int) -> str | None:
    """Why ``variant`` cannot run ``s`` yet (printed as "not supported yet"), or None if it can."""
    reasons = []
    if s.owners > training_rows:
        reasons.append(f"the data set has {training_rows:,} training rows, too few to give {s.owners:,} owners "
                       "identical shards in every variant (needs a larger data set)")
    if variant != REFERENCE and not s.all_train:
        reasons.append("fedmodel runs one Flower node per owner and trains every owner each round; sampling "
                       f"{s.sampled} of {s.owners:,} registered owners needs owners hosted in cohorts per node")
    return "; ".join(reasons) or None
