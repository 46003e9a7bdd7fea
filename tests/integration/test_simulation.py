"""End-to-end simulations through Flower's real engine (SuperLink + Ray), 40-90 s each on 2 idle cores.

The first runs in the default suite; the others run with ``pytest -m slow`` (in-process tests cover their logic).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fedmodel.simulations.runner import run_simulation
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from safetensors.torch import load_file

from fedmodel.config import RunConfig

pytestmark = pytest.mark.integration

RUN_FILES = ("config.toml", "report.json", "metrics.csv", "plots/accuracy.png", "plots/loss.png",
             "plots/epsilon.png", "report.html", "model.safetensors")


def _flower_processes() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines()  # simulation processes only: other tests may run deployments
            if ("flower-superlink" in line and "--simulation" in line or "flwr-simulation" in line)
            and "<defunct>" not in line]


def _new_processes_gone(before: list[str], within_s: float = 30.0) -> list[str]:
    """Processes started since ``before`` that are still there after ``within_s`` (a loaded machine exits slowly)."""
    import time

    deadline = time.monotonic() + within_s
    while True:
        left = sorted(set(_flower_processes()) - set(before))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    """``fedmodel simulate`` as a user types it, in its own process."""
    return subprocess.run([sys.executable, "-m", "fedmodel.cli", "simulate", *args], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "COLUMNS": "200"})


def test_three_owners_two_rounds_with_one_failing_owner(tmp_path: Path) -> None:
    """The default suite's end-to-end simulation: the README's ``fedmodel simulate`` through SuperLink and Ray."""
    out = tmp_path / "run"
    before = _flower_processes()
    proc = _simulate("--clients", "3", "--rounds", "2", "--inject-failure-owners", "1", "--out", str(out),
                     "--format", "json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)

    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert report["status"] == "completed"
    assert report["flower_status"] == "finished:completed"  # Flower's own word, asked in-process (fedmodel.local_control)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for r in report["rounds"]:
        assert (r["num_replies"], r["num_failures"]) == (2, 1)
        assert r["failures"][0]["owner"] == 1
        assert "injected failure" in r["failures"][0]["reason"]
    assert 0.5 <= report["final"]["accuracy"] <= 1.0  # digits, 2 owners, 2 DP rounds: a band, not a value

    owners = {o["owner"]: o for o in report["privacy"]["owners"]}
    assert set(owners) == {0, 2}
    orders = RDPAccountant.DEFAULT_ALPHAS
    for o in owners.values():
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"], orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=report["privacy"]["delta"])
        assert o["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert o["epsilon"] <= o["budget_epsilon"] == 3.0
    round_eps = [[e["epsilon"] for e in r["owner_epsilon"]] for r in report["rounds"]]
    assert all(b > a for a, b in zip(round_eps[0], round_eps[1], strict=True))  # cumulative across rounds

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert float(rows[-1]["accuracy"]) == pytest.approx(report["final"]["accuracy"], rel=1e-5)
    weights = load_file(str(out / "model.safetensors"))
    assert weights["0.weight"].shape == (10, 64)
    assert report["timing"]["total_seconds"] > report["timing"]["startup_seconds"] > 0
    assert json.loads((out / "report.json").read_text())["status"] == "completed"
    assert _new_processes_gone(before) == []  # the SuperLink and its children were stopped


@pytest.mark.slow  # about 50 s on idle cores; tests/server/test_recorder.py stops such a run in-process
def test_run_where_every_owner_fails_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "failed"
    cmd = [sys.executable, "-m", "fedmodel.cli", "simulate", "--clients", "2", "--rounds", "1", "--no-dp",
           "--inject-failure-owners", "0,1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "all 2 owners failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["flower_status"] == "finished:failed"
    assert "injected failure" in report["reason"]
    assert report["privacy"]["mode"] == "none" and report["privacy"]["owners"] == []


def _messy_breast_cancer(path: Path) -> Path:
    """Breast-cancer with a numeric id column, 5% empty cells, duplicated rows and wild values."""
    import numpy as np

    from fedmodel.data.bundled import _sklearn_data_dir

    with (_sklearn_data_dir() / "breast_cancer.csv").open(encoding="ascii") as fh:
        next(csv.reader(fh))
        raw = np.loadtxt(fh, delimiter=",")
    rng = np.random.default_rng(3)
    rows = np.concatenate([np.arange(len(raw)), rng.choice(len(raw), 40, replace=False)])
    x, y = raw[rows, :-1].copy(), raw[rows, -1].astype(int)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.01] *= 100
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["patient_id"] + [f"f{i}" for i in range(30)] + ["diagnosis"])
        for i, r in enumerate(rows):
            out.writerow([str(900_000 + r)] + ["" if np.isnan(v) else repr(float(v)) for v in x[i]] + [str(y[i])])
    return path


@pytest.mark.slow  # about 60 s on idle cores; tests/clients/test_messy_data.py cleans and scales in-process
def test_messy_file_is_cleaned_at_the_owners_with_federated_scaling_and_a_poisoned_update_is_rejected(
        tmp_path: Path) -> None:
    data = _messy_breast_cancer(tmp_path / "messy.csv")
    out = tmp_path / "run"
    config = RunConfig(dataset="file", data_path=str(data), label="diagnosis", clients=4, rounds=2, out=str(out),
                       missing="median", duplicates="drop", outliers="clip", scaling="zscore",
                       id_columns=("patient_id",), aggregation=RunConfig.from_mapping({"aggregation": "median"}).aggregation,
                       inject_faults=RunConfig.from_mapping({"clients": 4, "inject-faults": "3:nan"}).inject_faults)
    report = run_simulation(config).report
    assert report["status"] == "completed", report["reason"]
    assert 0.8 <= report["final"]["accuracy"] <= 1.0  # breast-cancer, 3 honest owners, 2 DP rounds: a band

    # owner 3's NaN update is rejected before aggregation, named per round, and the model stays finite
    for r in report["rounds"]:
        assert (r["num_replies"], r["num_failures"]) == (3, 1)
        assert r["failures"][0]["owner"] == 3 and "NaN" in r["failures"][0]["reason"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights["0.weight"].shape == (2, 30)  # the id column never reached the model
    assert all(bool(w.isfinite().all()) for w in weights.values())

    # every owner's counts (never a value), before and after cleaning
    quality = {q["owner"]: q for q in report["data_quality"]["owners"]}
    assert set(quality) == {0, 1, 2, 3}
    assert sum(q["missing-cells"] for q in quality.values()) > 0
    assert all(q["clean-cells-imputed"] == q["missing-cells"] for q in quality.values())
    assert all(q["features"] == 30 for q in quality.values())

    # the scaling sums were charged to every owner, and its epsilon is part of the total
    scaling = report["scaling"]
    assert scaling["owners_answered"] == 4 and len(scaling["features"]) == 30
    orders = RDPAccountant.DEFAULT_ALPHAS
    for o in report["privacy"]["owners"]:
        stats_rdp = compute_rdp(q=1.0, noise_multiplier=config.scaling_noise, steps=1, orders=orders)
        sgd_rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"],
                              orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=stats_rdp + sgd_rdp, delta=report["privacy"]["delta"])
        assert o["epsilon"] == pytest.approx(expected, rel=1e-9)
        alone, _ = get_privacy_spent(orders=orders, rdp=stats_rdp, delta=report["privacy"]["delta"])
        assert o["epsilon_scaling_statistics"] == pytest.approx(alone, rel=1e-9)
        assert o["epsilon"] <= 3.0
    html = (out / "report.html").read_text()
    assert 'id="data-quality"' in html and 'id="scaling-features"' in html


@pytest.mark.slow  # two simulations, 2-3 min; tests/clients/test_privacy_ledger.py shares a ledger in-process
def test_two_simulations_sharing_a_ledger_the_second_is_refused_with_what_remains(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"

    def simulate(name: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "fedmodel.cli", "simulate", "--dataset", "breast-cancer", "--clients", "2",
               "--rounds", "1", "--epsilon", "1", "--ledger", str(ledger), "--out", str(tmp_path / name)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=400, env={**os.environ, "COLUMNS": "200"})

    first = simulate("first")
    assert first.returncode == 0, first.stdout + first.stderr
    owners = json.loads((tmp_path / "first" / "report.json").read_text())["privacy"]["owners"]
    assert [o["owner"] for o in owners] == [0, 1]
    assert all(o["epsilon_total"] == o["epsilon"] and 0.98 <= o["epsilon"] <= 1.0 for o in owners)

    second = simulate("second")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "privacy budget is used up" in second.stderr and "remaining 0.0" in second.stderr
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    assert report["status"] == "failed"
    refusals = report["privacy"]["refusals"]
    assert sorted(r["owner"] for r in refusals) == [0, 1] and {r["rule"] for r in refusals} == {"budget"}

    shown = subprocess.run([sys.executable, "-m", "fedmodel.cli", "ledger", "show", "--state-dir", str(ledger),
                            "--format", "json"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    totals = {o["owner"]: o for o in json.loads(shown.stdout)["owners"]}
    assert set(totals) == {"0", "1"} and all(o["committed"] == 1 and o["reserved"] == 0 for o in totals.values())
    for log in (ledger / "audit.log", tmp_path / "first" / "audit.log", tmp_path / "second" / "audit.log"):
        verified = subprocess.run([sys.executable, "-m", "fedmodel.cli", "audit-log", "verify", str(log),
                                   "--require-head"], capture_output=True, text=True, timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "refuse" in (ledger / "audit.log").read_text()
