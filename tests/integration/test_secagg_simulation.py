"""Secure aggregation end to end: fedmodel simulate's Flower engine with SecAgg+ and Opacus DP-SGD at the owners."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedmodel.simulations.runner import run_simulation
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedmodel.config import RunConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # 220 s on the shared 2-core machine


def test_three_owners_two_secagg_rounds_with_dp_complete_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = RunConfig(clients=3, rounds=2, out=str(out), secure_aggregation=True)
    report = run_simulation(config).report

    assert report["status"] == "completed"
    assert [(r["round"], r["num_replies"], r["num_failures"]) for r in report["rounds"]] == [(1, 3, 0), (2, 3, 0)]
    assert 0.5 <= report["final"]["accuracy"] <= 1.0  # digits, 3 owners, 2 DP rounds: a band, not a value
    assert report["config"]["secure-aggregation"] is True
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    secure = [e for e in events if e["event"] == "secure-aggregation"]
    assert [(e["round"], e["nodes"], e["shares"], e["threshold"], e["completed"]) for e in secure] == [
        (1, 3, 3, 2, True), (2, 3, 3, 2, True)]
    # every owner's epsilon came back through SecAgg+ and is the RDP accountant's for its own history
    owners = {o["owner"]: o for o in report["privacy"]["owners"]}
    assert set(owners) == {0, 1, 2}
    orders = RDPAccountant.DEFAULT_ALPHAS
    for o in owners.values():
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"], orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=report["privacy"]["delta"])
        assert o["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert 0 < o["epsilon"] <= 3.0
