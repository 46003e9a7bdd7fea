"""The typed report (:mod:`fedmodel.report.model`): it reads and writes report.json without changing a key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fedmodel.report.model import Failure, Report

BEFORE = Path(__file__).parent / "data" / "default_report_before.json"
"""report.json of the default simulation before the typed report, less its timings (``timing``, ``rounds[].seconds``)."""


def without_timings(report: dict[str, Any]) -> dict[str, Any]:
    """The report less its timings: ``timing`` and each round's ``seconds``."""
    report = copy.deepcopy(report)
    report.pop("timing", None)
    for row in report.get("rounds", []):
        row.pop("seconds", None)
    return report


@pytest.fixture
def before() -> dict[str, Any]:
    return dict(json.loads(BEFORE.read_text(encoding="utf-8")))


def test_the_default_runs_report_reads_and_writes_back_key_for_key(before: dict[str, Any]) -> None:
    written = without_timings(Report.from_dict(before).to_dict())
    assert json.dumps(written, indent=2) == json.dumps(before, indent=2)  # same keys, values and order


def test_optional_keys_are_written_exactly_when_present(before: dict[str, Any]) -> None:
    report = copy.deepcopy(before)
    report["rounds"][1]["retried"] = [{"attempt": 1, "replied": [0], "failures": [], "timed_out": [1, "node 9"],
                                       "not_connected": []}]
    report["owners"][0].update(claimed_name=["site-z"], evaluation_dp=True, exact_replies=False)
    report["privacy"]["owners"][0]["claimed_name"] = ["site-z"]
    report["privacy"]["audit"] = {"verdict": "consistent", "lower_bound_epsilon": 0.1}
    report["node_audit_heads"] = {"site-a": [{"round": 1, "kind": "train", "owner": "site-a", "count": 4,
                                              "tip": "ab", "keyed": True, "rolled_back_from": 9}]}
    report["identity"] = {"source": "registry", "claims": [{"node_id": 5, "owner": "site-a",
                                                             "claimed_name": "site-b", "round": 1}]}
    report["flower_status"] = "finished:completed"
    report["language_model"] = {"base": "m"}  # a section of another kind of run: kept as it is
    report["timing"] = {"serverapp_seconds": 1.0, "total_seconds": 2.0}
    for row in report["rounds"]:
        row["seconds"] = 0.5
    assert Report.from_dict(report).to_dict() == report
    plain = Report.from_dict(before).to_dict()
    assert not {"node_audit_heads", "identity", "language_model"} & set(plain)
    assert "audit" not in plain["privacy"] and "retried" not in plain["rounds"][1]


def test_a_report_without_dp_has_no_level(before: dict[str, Any]) -> None:
    before["privacy"] = {"mode": "none", "delta": None, "accountant": None, "budget_epsilon": None,
                         "max_epsilon": None, "ledger": None, "refusals": [], "owners": [], "client_level": None}
    assert Report.from_dict(before).to_dict()["privacy"] == before["privacy"]
    assert not Report.from_dict(before).privacy.dp


def test_nan_is_written_as_null_and_a_partial_report_reads(before: dict[str, Any]) -> None:
    before["final"]["accuracy"] = float("nan")
    assert Report.from_dict(before).to_dict()["final"]["accuracy"] is None
    empty = Report.from_dict({"rounds": None, "privacy": None, "final": {"accuracy": None}})
    assert empty.rounds == [] and empty.privacy.owners == [] and empty.final is not None


def test_failures_are_data(before: dict[str, Any]) -> None:
    before["rounds"][0]["failures"] = [{"node_id": 7, "owner": 3, "reason": "owner 3: boom\ntrace"}]
    failure = Report.from_dict(before).rounds[0].participation.failures[0]
    assert failure == Failure(reason="owner 3: boom\ntrace", owner=3, node_id=7)
    assert failure.first_line == "owner 3: boom"
    assert Report.from_dict(before).failures == 0  # num_failures counts, the list names


def test_read(tmp_path: Path, before: dict[str, Any]) -> None:
    (tmp_path / "report.json").write_text(json.dumps(before), encoding="utf-8")
    assert Report.read(tmp_path / "report.json").dataset == "digits"
