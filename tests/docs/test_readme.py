"""The README stays a five-minute read: short, with the two set-up commands unchanged, its links and numbers sourced."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")

SET_UP_COMMANDS = (
    "python3.11 -m venv .venv && . .venv/bin/activate && pip install -q -e . && fedmodel simulate",
    'python3.11 -m venv .venv && . .venv/bin/activate && pip install -q -e ".[dev]" && pytest',
)


def test_the_readme_is_at_most_160_lines() -> None:
    assert len(README.splitlines()) <= 160, f"README.md has {len(README.splitlines())} lines: move detail to docs/"


@pytest.mark.parametrize("command", SET_UP_COMMANDS)
def test_the_readme_holds_each_set_up_command_byte_for_byte_on_a_line_of_its_own(command: str) -> None:
    assert command in README.splitlines()


def test_every_relative_link_of_the_readme_points_at_a_file_of_the_repository() -> None:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    relative = [t for t in targets if "://" not in t]
    assert relative, "the README links to nothing in the repository"
    missing = [t for t in relative if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_every_paragraph_of_the_readme_with_a_measured_number_cites_benchmarks_results() -> None:
    """A number with a unit of measurement (seconds, percent) must say where it was measured."""
    paragraphs = re.split(r"\n\s*\n", README)
    measured = [p for p in paragraphs if re.search(r"\b\d+(\.\d+)?\s*(s|%|min)\b", p) and not p.startswith("```")]
    assert measured, "no measured number found: the test no longer looks at the right text"
    unsourced = [p for p in measured if "benchmarks/RESULTS.md" not in p]
    assert not unsourced, f"paragraphs with a measured number and no benchmarks/RESULTS.md: {unsourced}"


def test_the_readme_shows_a_screenshot_that_exists_and_is_small() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images, "the README shows no screenshot"
    for image in images:
        assert (ROOT / image).stat().st_size < 300_000, f"{image} is over 300 KB"
