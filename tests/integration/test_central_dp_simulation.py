"""Central DP end to end through Flower's engine: ``fedmodel simulate --central-dp fixed``. About 60 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # 1-2 min; in-process tests cover wrapper, mods, accounting


def test_simulate_with_central_dp_reports_both_epsilons(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedmodel.cli", "simulate", "--clients", "3", "--rounds", "2",
               "--central-dp", "fixed", "--central-noise", "0.8", "--central-clip", "0.5", "--out", str(out),
               "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    privacy = report["privacy"]

    assert privacy["mode"] == "dp-sgd" and len(privacy["owners"]) == 3  # sample-level, each owner
    assert all(0 < o["epsilon"] <= o["budget_epsilon"] for o in privacy["owners"])

    level = privacy["client_level"]  # client-level, the run
    assert (level["noise_multiplier"], level["clip"], level["rounds"], level["delta"]) == (0.8, 0.5, 2, 1e-5)
    assert [(r["round"], r["owners"]) for r in level["releases"]] == [(1, 3), (2, 3)]
    assert [r["noise_std"] for r in level["releases"]] == pytest.approx([0.8 * 0.5 / 3] * 2)
    oracle = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    oracle.compose(dp_accounting.GaussianDpEvent(0.8), 2)
    assert oracle.get_epsilon(1e-5) * (1 - 1e-12) <= level["epsilon"] <= oracle.get_epsilon(1e-5) * 1.01
    assert report["rounds"][-1]["num_replies"] == 3 and report["rounds"][-1]["num_failures"] == 0
    assert "privacy-client-level" in (out / "report.html").read_text()
