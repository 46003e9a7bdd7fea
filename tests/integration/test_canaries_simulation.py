"""``--audit`` through Flower's simulation engine: canaries at the owners, the bound in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fedmodel.simulations.runner import run_simulation

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.privacy.canaries import run_canaries

pytestmark = pytest.mark.integration


def test_audited_simulation_reports_a_bound_below_the_proven_epsilon(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = RunConfig(clients=2, rounds=2, epsilon=1.0, out=str(out), audit=True, audit_canaries=100)
    report = run_simulation(config).report

    assert report["status"] == "completed"
    audit = report["privacy"]["audit"]
    owners = {o["owner"]: o for o in report["privacy"]["owners"]}
    assert audit["owners"] == [0, 1] and audit["canaries"] == 100
    assert audit["proven_epsilon"] == pytest.approx(max(o["epsilon"] for o in owners.values()))
    assert 0 <= audit["lower_bound_epsilon"] <= audit["proven_epsilon"] <= 1.0
    assert audit["verdict"] == "consistent"
    assert 0 <= audit["correct"] <= audit["guesses"] <= 100

    # The accounting is the real one: each owner's examples (so its sample rate) include its canaries.
    split, canaries = federated_split(config), run_canaries(config, federated_split(config))
    for owner, entry in owners.items():
        included = int(np.sum((canaries.owner == owner) & canaries.included))
        assert entry["num_examples"] == len(split.owner(owner)) + included
    assert json.loads((out / "report.json").read_text())["privacy"]["audit"] == audit
    assert 'id="privacy-audit"' in (out / "report.html").read_text()
