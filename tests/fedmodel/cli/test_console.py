"""The terminal helpers: JSON reports on stdout as plain, parseable JSON."""

from __future__ import annotations

import json

import pytest

from fedmodel.cli.console import print_json_document


def test_a_report_goes_to_stdout_as_indented_json_that_parses_back(capsys: pytest.CaptureFixture[str]) -> None:
    report = {"status": "completed", "rounds": [{"round": 1, "owner_epsilon": [{"owner": 0, "epsilon": 2.5}]}],
              "reason": None, "dataset": "[bold]digits[/bold]"}  # rich markup stays text
    print_json_document(report)
    captured = capsys.readouterr()
    assert json.loads(captured.out) == report
    assert captured.out.startswith("{\n  \"status\"") and captured.err == ""
