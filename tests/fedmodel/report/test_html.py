"""Tests of :mod:`fedmodel.report.html`."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fedmodel.report.html import render_html, write_html
from fedmodel.report.plots import write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_PREFIX = "data:image/png;base64,"


def make_report() -> dict[str, Any]:
    """Build a small report of a DP run: 3 rounds, 3 owners, one failure.

    Returns
    -------
    dict[str, Any]
        A report dict shaped like ``report.json``.
    """
    rounds = []
    for r in range(1, 4):
        failures = ([{"node_id": 123, "owner": None, "reason": "node timed out"}]
                    if r == 2 else [])
        rounds.append({
            "round": r, "train_loss": 2.0 / r, "test_loss": 1.8 / r,
            "accuracy": 0.3 + 0.2 * r, "precision": 0.3 + 0.2 * r, "recall": 0.3 + 0.2 * r,
            "f1": 0.25 + 0.2 * r, "num_replies": 3 - len(failures),
            "num_failures": len(failures), "seconds": 1.5, "failures": failures,
            "owner_epsilon": [{"owner": o, "epsilon": r * (0.9 + 0.01 * o)} for o in range(3)],
        })
    return {
        "status": "completed", "reason": None, "dataset": "digits", "num_clients": 3,
        "num_rounds": 3, "strategy": "fedavg", "model": "mlp",
        "initial": {"test_loss": 2.3, "accuracy": 0.1, "precision": 0.05, "recall": 0.1,
                    "f1": 0.03},
        "rounds": rounds,
        "final": {"accuracy": 0.9, "precision": 0.912, "recall": 0.9, "f1": 0.85,
                  "test_loss": 0.6},
        "owners": [{"owner": o, "num_examples": 144, "accuracy": 0.91, "precision": 0.9,
                    "recall": 0.9, "f1": 0.9, "train_loss": 0.4} for o in range(3)],
        "privacy": {
            "mode": "dp-sgd", "delta": 1e-5, "accountant": "rdp", "budget_epsilon": 3.0,
            "max_epsilon": 2.76,
            "owners": [{"owner": o, "epsilon": 2.7 + 0.03 * o, "budget_epsilon": 3.0,
                        "noise_multiplier": 1.1, "sample_rate": 0.2, "steps": 75,
                        "max_grad_norm": 1.0, "num_examples": 144 + o} for o in range(3)],
        },
        "timing": {"total_seconds": 60.2, "startup_seconds": 25.0, "serverapp_seconds": 30.1},
        "versions": {"fedmodel": "0.1.0", "flwr": "1.41.0", "python": "3.11.7"},
        "config": {"dataset": "digits", "clients": 3, "dp": True, "epsilon": 3.0,
                   "seed": None},
        "notes": ["first note"],
    }


class TableCollector(HTMLParser):
    """Collect the text of each table cell, per table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = dict(attrs).get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(page: str) -> dict[str, list[list[str]]]:
    """Parse the tables of a page.

    Parameters
    ----------
    page : str
        HTML.

    Returns
    -------
    dict[str, list[list[str]]]
        Table id -> rows of cell texts (header row included).
    """
    collector = TableCollector()
    collector.feed(page)
    return collector.tables


@pytest.fixture
def report() -> dict[str, Any]:
    """A DP report with 3 rounds and 3 owners."""
    return make_report()


@pytest.fixture(scope="module")
def plots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real plots of the report, drawn once for the module."""
    return write_plots(make_report(), tmp_path_factory.mktemp("plots"))


def test_embeds_three_pngs(report: dict[str, Any], plots: dict[str, Path]) -> None:
    page = render_html(report, plots)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count(IMG_PREFIX) == 3
    first = re.search(re.escape(IMG_PREFIX) + r'([A-Za-z0-9+/=]+)"', page)
    assert first is not None
    assert base64.b64decode(first.group(1))[:8] == PNG_MAGIC
    assert "<link" not in page and "<script" not in page
    assert not re.search(r"(src|href)=\"https?:", page)


def test_privacy_owner_table(report: dict[str, Any], plots: dict[str, Path]) -> None:
    rows = tables(render_html(report, plots))["privacy-owners"]
    assert rows[0] == ["Owner", "Epsilon this run", "of it: scaling statistics", "Epsilon all runs", "Budget",
                       "Remaining", "Noise multiplier", "Sample rate", "Steps", "Max grad norm", "Examples"]
    assert rows[1:] == [
        ["0", "2.700", "–", "—", "3.000", "—", "1.1", "0.2", "75", "1", "144"],
        ["1", "2.730", "–", "—", "3.000", "—", "1.1", "0.2", "75", "1", "145"],
        ["2", "2.760", "–", "—", "3.000", "—", "1.1", "0.2", "75", "1", "146"],
    ]


def test_privacy_totals_across_runs_and_refusals(report: dict[str, Any], plots: dict[str, Path]) -> None:
    report["privacy"]["ledger"] = "simulation ledger in runs/ledger"
    report["privacy"]["owners"][0].update(epsilon_total=4.5, budget_epsilon=5.0, remaining_epsilon=0.5)
    report["privacy"]["refusals"] = [{"round": 1, "owner": 2, "rule": "budget",
                                      "reason": "owner 2: the privacy budget is used up: <remaining 0.0042>"}]
    page = render_html(report, plots)
    parsed = tables(page)
    assert parsed["privacy-owners"][1][:6] == ["0", "2.700", "–", "4.500", "5.000", "0.500"]
    assert parsed["privacy-refusals"] == [["Round", "Owner", "Rule", "Reason"],
                                          ["1", "2", "budget", "owner 2: the privacy budget is used up: "
                                                               "<remaining 0.0042>"]]
    assert "&lt;remaining 0.0042&gt;" in page
    assert ["Ledger (totals across runs)", "simulation ledger in runs/ledger"] in parsed["privacy"]


def test_data_quality_and_scaling_sections(report: dict[str, Any], plots: dict[str, Path]) -> None:
    report = {**report, "data_quality": {
        "note": "counts only", "cleaning": {"missing": "median", "duplicates": "drop"},
        "owners": [{"owner": 0, "rows": 101, "missing-cells": 160, "duplicate-rows": 3, "clean-rows-out": 98}],
    }, "scaling": {
        "method": "zscore", "statistics": "federated", "owners_answered": 5, "noise_multiplier": 5.0,
        "tolerance": "3 standard errors", "features": [{"mean": 14.5, "std": 3.5, "mean_tolerance": 0.9,
                                                         "std_tolerance": 1.2, "bounds": [5.6, 30.2]}],
    }}
    report["privacy"]["owners"][0]["epsilon_scaling_statistics"] = 0.7946
    parsed = tables(render_html(report, plots))
    quality = parsed["data-quality"]
    assert quality[0][:3] == ["Owner", "Rows", "Missing cells"]
    assert quality[1][:3] == ["0", "101", "160"] and quality[1][-1] == "98"
    assert parsed["scaling-features"][1] == ["0", "14.5", "0.9", "3.5", "1.2", "5.6 .. 30.2"]
    assert parsed["privacy-owners"][1][2] == "0.795"


def test_summary_and_rounds(report: dict[str, Any], plots: dict[str, Path]) -> None:
    parsed = tables(render_html(report, plots))
    assert parsed["summary"][-1] == ["final", "90.0%", "91.2%", "90.0%", "85.0%", "0.6000"]
    rounds = parsed["rounds"]
    assert [row[0] for row in rounds[1:]] == ["0", "1", "2", "3"]
    assert rounds[3] == ["2", "1.0000", "0.9000", "70.0%", "65.0%", "2", "1", "1.5"]
    assert len(parsed["owners"]) == 4


def test_failures_timing_versions_config(report: dict[str, Any],
                                        plots: dict[str, Path]) -> None:
    page = render_html(report, plots)
    assert "node 123: node timed out" in page
    assert "60.2 s" in page
    assert "1.41.0" in page
    assert "dataset = &#34;digits&#34;" in page  # Jinja2 (markupsafe) writes " as &#34;, html.escape wrote &quot;
    assert "dp = true" in page
    assert "<li>first note</li>" in page
    assert "failure-reason" not in page.split("</style>")[1]


def test_failed_run_shows_reason(report: dict[str, Any], plots: dict[str, Path]) -> None:
    report["status"] = "failed"
    report["reason"] = "all owners failed in round 2 <boom>"
    page = render_html(report, plots)
    assert 'class="failure-reason"' in page
    assert "all owners failed in round 2 &lt;boom&gt;" in page
    assert "<boom>" not in page


def test_escapes_strings(report: dict[str, Any], plots: dict[str, Path]) -> None:
    report["dataset"] = "<script>alert(1)</script>"
    report["rounds"][1]["failures"][0]["reason"] = "<img src=x>"
    report["config"]["dataset"] = "<script>"
    page = render_html(report, plots)
    assert "<script>" not in page
    assert "<img src=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_missing_plots(report: dict[str, Any], plots: dict[str, Path],
                       tmp_path: Path) -> None:
    partial = {"accuracy": plots["accuracy"], "epsilon": tmp_path / "gone.png"}
    page = render_html(report, partial)
    assert page.count(IMG_PREFIX) == 1
    assert 'Plot "loss" is not available.' in page
    assert 'Plot "epsilon" is not available.' in page
    assert render_html(report, {}).count(IMG_PREFIX) == 0


def test_unknown_values(plots: dict[str, Path]) -> None:
    page = render_html({"status": None, "dataset": None, "rounds": None, "privacy": None,
                        "final": {"accuracy": None, "f1": float("nan")}}, plots)
    assert "</html>" in page
    assert render_html({}, {}).endswith("</html>\n")


def test_no_dp(report: dict[str, Any], plots: dict[str, Path]) -> None:
    report["privacy"] = {"mode": "none", "delta": None, "accountant": None,
                         "budget_epsilon": None, "max_epsilon": None, "owners": []}
    page = render_html(report, plots)
    assert "privacy-owners" not in page
    assert "No differential privacy" in page


def test_write_html_atomic(report: dict[str, Any], plots: dict[str, Path],
                           tmp_path: Path) -> None:
    report["dataset"] = "chiffres é"
    target = tmp_path / "out" / "report.html"
    assert write_html(report, plots, target) == target
    assert target.read_text(encoding="utf-8") == render_html(report, plots)
    assert not (tmp_path / "out" / "report.html.tmp").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_participation_names_who_replied_failed_timed_out_and_was_not_connected(
        report: dict[str, Any], plots: dict[str, Path]) -> None:
    rounds = report["rounds"]
    rounds[0].update(replied=["site-0", "site-1", "site-2"], timed_out=[], not_connected=[], attempt=1)
    rounds[1].update(replied=["site-0"], attempt=2, timed_out=["site-2"], not_connected=[],
                     failures=[{"node_id": 123, "owner": "site-1", "reason": "Node Unavailable"}],
                     retried=[{"attempt": 1, "replied": ["site-0"], "failures": [], "timed_out": ["site-1", "site-2"],
                               "not_connected": []}])
    rounds[2].update(replied=["site-0", "site-1"], timed_out=[], not_connected=["site-2"], attempt=1)
    report["unfinished_round"] = {"round": 4, "attempt": 1, "replied": ["site-0"], "timed_out": [],
                                  "failures": [{"node_id": 7, "owner": "site-1", "reason": "update rejected: NaN"}],
                                  "not_connected": ["site-2"]}
    parsed = tables(render_html(report, plots))["participation"]
    assert parsed == [
        ["Round", "Replied", "Failed (reason)", "Timed out", "Not connected"],
        ["1", "(3) site-0, site-1, site-2", "—", "—", "—"],
        ["2 (attempt 1)", "(1) site-0", "—", "(2) site-1, site-2", "—"],
        ["2 (attempt 2)", "(1) site-0", "node 123 (owner site-1): Node Unavailable", "(1) site-2", "—"],
        ["3", "(2) site-0, site-1", "—", "—", "(1) site-2"],
        ["4 (not completed)", "(1) site-0", "node 7 (owner site-1): update rejected: NaN", "—", "(1) site-2"],
    ]


def test_participation_of_a_report_without_the_lists(report: dict[str, Any], plots: dict[str, Path]) -> None:
    parsed = tables(render_html(report, plots))["participation"]  # an older report.json: counts only
    assert [row[0] for row in parsed[1:]] == ["1", "2", "3"]
    assert parsed[2] == ["2", "—", "node 123: node timed out", "—", "—"]
    assert "No rounds recorded." in render_html({"rounds": []}, plots)


def test_an_owner_name_and_a_failure_reason_are_escaped_wherever_they_appear(
        report: dict[str, Any], plots: dict[str, Path]) -> None:
    evil, reason = "<script>alert(1)</script>", "owner x: &<>\"' broke"
    report["owners"][0]["owner"] = evil
    report["privacy"]["owners"][0]["owner"] = evil
    report["privacy"]["refusals"] = [{"round": 1, "owner": evil, "rule": "budget", "reason": reason}]
    report["rounds"][0].update(replied=[evil], timed_out=[evil], not_connected=[evil],
                               failures=[{"node_id": 1, "owner": evil, "reason": reason}])
    report["unfinished_round"] = {"round": 4, "attempt": 1, "replied": [evil], "timed_out": [],
                                  "failures": [{"node_id": 2, "owner": evil, "reason": reason}], "not_connected": []}
    page = render_html(report, plots)
    assert "<script" not in page and "&<>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 9
    assert page.count("&amp;&lt;&gt;&#34;&#39; broke") == 3
    parsed = tables(page)
    assert parsed["owners"][1][0] == evil and parsed["privacy-refusals"][1][3] == reason


def test_the_stylesheet_is_package_data_inlined_in_the_page(report: dict[str, Any], plots: dict[str, Path]) -> None:
    from importlib.resources import files

    css = files("fedmodel.report").joinpath("templates", "report.css").read_text(encoding="utf-8")
    assert ".failure-reason" in css
    assert css.strip() in render_html(report, plots)  # inlined as it is: the page stays self-contained
