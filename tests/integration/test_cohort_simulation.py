"""Cohorts through Flower's real engine: owners hosted many per node train exactly as one node each would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fedmodel.simulations.runner import run_simulation
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from safetensors.torch import load_file

from fedmodel.config import PartitionSpec, RunConfig

pytestmark = pytest.mark.integration


@pytest.mark.slow  # two simulations, about 2 minutes on 2 cores; the in-process equivalence runs by default
def test_two_nodes_hosting_six_owners_give_the_model_and_epsilons_of_six_nodes(tmp_path: Path) -> None:
    base = RunConfig(clients=6, rounds=2, inject_failure_owners=(4,))
    cohort = run_simulation(base.replace(nodes=2, out=str(tmp_path / "cohort"))).report
    alone = run_simulation(base.replace(out=str(tmp_path / "alone"))).report
    for report in (cohort, alone):
        assert report["status"] == "completed"
        assert [(r["num_replies"], r["num_failures"]) for r in report["rounds"]] == [(5, 1), (5, 1)]
        assert all(r["failures"][0]["owner"] == 4 for r in report["rounds"])
    assert cohort["privacy"]["owners"] == alone["privacy"]["owners"]  # every owner's epsilon, the same numbers
    cohort_model = load_file(str(tmp_path / "cohort" / "model.safetensors"))
    alone_model = load_file(str(tmp_path / "alone" / "model.safetensors"))
    for key, value in alone_model.items():
        assert torch.equal(cohort_model[key], value), key  # same seeds, same owner order: the same model
    assert cohort["final"]["accuracy"] == alone["final"]["accuracy"]


@pytest.mark.slow  # about 2 minutes on 2 cores; sampling and per-owner state are tested in process by default
def test_a_million_registered_owners_ten_sampled_per_round(tmp_path: Path) -> None:
    config = RunConfig(clients=1_000_000, nodes=2, owners_per_round=10, rounds=2,
                       partition=PartitionSpec.parse("sample:2"), out=str(tmp_path / "run"))
    report = run_simulation(config).report
    assert report["status"] == "completed"
    rounds = report["rounds"]
    assert [len(r["replied"]) for r in rounds] == [10, 10]
    assert rounds[0]["replied"] != rounds[1]["replied"]  # a new sample each round
    assert all(0 <= o < 1_000_000 for r in rounds for o in r["replied"])
    trained = [o for r in rounds for o in r["replied"]]
    owners = {o["owner"]: o for o in report["privacy"]["owners"]}
    assert sorted(owners) == sorted(set(trained))  # the owners who trained, and only they, have a privacy record
    for owner, record in owners.items():  # an owner pays only for the rounds it trained in: Opacus' own analysis
        steps = int(record["steps"])
        assert steps == trained.count(owner)  # 2 rows, batch 32: one Poisson step per round trained
        rdp = compute_rdp(q=record["sample_rate"], noise_multiplier=record["noise_multiplier"], steps=steps,
                          orders=RDPAccountant.DEFAULT_ALPHAS)
        oracle, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=config.delta)
        assert record["epsilon"] == pytest.approx(oracle, rel=1e-9)
        assert record["epsilon"] < config.epsilon  # calibrated for every round; trained in fewer
    assert 0.0 <= report["final"]["accuracy"] <= 1.0
