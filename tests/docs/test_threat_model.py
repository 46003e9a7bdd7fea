"""The threat-model page against the code it describes: its attacks are the red-team suite's tests, and every
node option it says relaxes a protection is an option of ``fedmodel node start`` whose help says what it gives up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli.node import node_app

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "threat-model.md").read_text(encoding="utf-8")
SUITE = (ROOT / "tests" / "adversarial" / "test_hostile_coordinator.py").read_text(encoding="utf-8")


def relaxing_options() -> list[str]:
    section = PAGE.split("## Options that relax a protection", 1)[1].split("\n## ", 1)[0]
    return sorted({m.group(1) for m in re.finditer(r"^\| `(--[a-z-]+)", section, re.M)})


def test_every_attack_the_page_names_is_a_red_team_test_and_every_red_team_test_is_named() -> None:
    named = set(re.findall(r"`(test_\w+)`", PAGE))
    tests = set(re.findall(r"^def (test_\w+)\(", SUITE, re.M))
    assert named == tests, f"on the page only: {sorted(named - tests)}; in the suite only: {sorted(tests - named)}"


def test_the_page_lists_relaxing_options() -> None:
    assert {"--allow-no-dp", "--evaluation", "--exact-replies", "--allow-local-statistics", "--insecure"} <= set(
        relaxing_options())


@pytest.mark.parametrize("option", relaxing_options())
def test_each_relaxing_option_is_on_node_start_and_its_help_says_what_it_gives_up(option: str) -> None:
    shown = CliRunner().invoke(node_app, ["start", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output
    rows: dict[str, list[str]] = {}  # rich prints each option as a row "│ --name ..." and its continuation lines
    current = None
    for line in shown.splitlines():
        body = line.strip("│ ")
        start = re.match(r"^│ [ *] {2}(--[a-z-]+)", line)
        if start:
            current = start.group(1)
        if current is not None:
            rows.setdefault(current, []).append(body)
    assert option in rows, f"{option} is not an option of fedmodel node start"
    assert "Gives up" in " ".join(rows[option]), f"{option}: its help does not say what it gives up"
