"""The benchmark scenarios of issue 6, the run config they share and what cannot run yet."""

from __future__ import annotations

from dataclasses import dataclass

from fedmodel.config import PartitionSpec, RunConfig

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
    partition: str = "iid"  # sample:R lets more owners than rows each hold R rows (rows shared among owners)

    @property
    def all_train(self) -> bool:
        return self.sampled >= self.owners

    def describe(self) -> str:
        who = "all training" if self.all_train else f"{self.sampled} sampled per round"
        return f"{self.owners:,} owners x {self.rounds} rounds, {who}"


SCENARIOS: dict[str, Scenario] = {
    "small": Scenario("small", owners=10, rounds=5, sampled=10),
    "thousand": Scenario("thousand", owners=1000, rounds=3, sampled=1000),
    "million": Scenario("million", owners=1_000_000, rounds=3, sampled=10, partition="sample:2"),
}
DEFAULT_NODES = 2
"""fedmodel's Flower nodes per simulation when owners outnumber them: one per core of a 2-core machine."""


def scenario(name: str, *, owners: int | None = None, rounds: int | None = None) -> Scenario:
    """The preset ``name``, with the owner count or rounds changed (the sampled count follows)."""
    if name not in SCENARIOS:
        raise ValueError(f"--scenario {name!r}: expected one of {', '.join(SCENARIOS)}")
    base = SCENARIOS[name]
    if owners is not None and owners < 1 or rounds is not None and rounds < 1:
        raise ValueError(f"--owners {owners} --rounds {rounds}: expected integers >= 1")
    n = base.owners if owners is None else owners
    sampled = n if base.all_train else min(base.sampled, n)
    return Scenario(base.name, n, base.rounds if rounds is None else rounds, sampled, base.partition)


def run_config(s: Scenario, *, dp: bool = True, nodes: int = DEFAULT_NODES) -> RunConfig:
    """The run all three variants train: fedmodel's defaults (digits, logreg, epsilon 3) at this size.

    fedmodel hosts the owners in cohorts on ``nodes`` Flower nodes when there are more owners than
    that (``nodes`` 0: one node per owner) and samples ``s.sampled`` of them per round; the
    reference app always runs one Flower node per owner.
    """
    cohorts = 0 < nodes < s.owners
    return RunConfig(clients=s.owners, rounds=s.rounds, dp=dp, device="cpu", partition=PartitionSpec.parse(s.partition),
                     nodes=nodes if cohorts else 0, owners_per_round=0 if s.all_train else s.sampled)


def unsupported(s: Scenario, variant: str, training_rows: int, *, nodes: int = DEFAULT_NODES) -> str | None:
    """Why ``variant`` cannot run ``s`` (printed as "not supported"), or None if it can."""
    reasons = []
    if s.partition == "iid" and s.owners > training_rows:
        reasons.append(f"the data set has {training_rows:,} training rows, too few to give {s.owners:,} owners "
                       "disjoint shards (use a sample:R partition)")
    if variant == REFERENCE and s.owners > REFERENCE_MAX_NODES:
        reasons.append(f"the reference runs one Flower node per owner: {s.owners:,} SuperNodes in Flower's simulation "
                       "engine (at 100,000 nodes flwr-simulation alone held 1.28 GB and a round took 58 s, "
                       "shared/facts/flower-simulation.md), not run here")
    if variant != REFERENCE and not s.all_train and not 0 < nodes < s.owners:
        reasons.append(f"sampling {s.sampled} of {s.owners:,} registered owners needs owners hosted in cohorts "
                       "(--nodes fewer than owners)")
    return "; ".join(reasons) or None


REFERENCE_MAX_NODES = 10_000
"""The most simulated SuperNodes the reference app is started with (one per owner)."""
