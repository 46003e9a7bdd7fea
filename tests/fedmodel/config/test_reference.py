"""Tests of :mod:`fedmodel.config.reference`: the committed options reference and pyproject defaults match the declaration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedmodel.config import RunConfig
from fedmodel.config.__main__ import main
from fedmodel.config.reference import markdown, pyproject_table

REPO = Path(__file__).resolve().parents[3]


def test_the_committed_options_reference_is_generated_from_the_declaration() -> None:
    committed = (REPO / "docs" / "reference" / "options.md").read_text(encoding="utf-8")
    assert committed == markdown(), ("docs/reference/options.md drifted from the declaration: run "
                                     "`python -m fedmodel.config --markdown > docs/reference/options.md`")


def test_the_reference_names_every_run_key_and_every_node_key() -> None:
    text = markdown()
    for key in [*RunConfig().to_mapping(), "budget-epsilon", "allow-no-dp", "audit-key"]:
        assert f"| `{key}` |" in text, key


def test_the_pyprojects_app_config_is_the_generated_table() -> None:
    committed = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    generated = tomllib.loads(pyproject_table())["tool"]["flwr"]["app"]["config"]
    assert committed == generated, "pyproject.toml drifted: paste `python -m fedmodel.config --pyproject` into it"
    assert list(generated) == list(RunConfig().to_mapping())


@pytest.mark.parametrize(("argv", "code", "needle"), [
    (["--markdown"], 0, "# Options reference"), (["--pyproject"], 0, "[tool.flwr.app.config]"), ([], 2, "usage"),
])
def test_the_command_prints_the_generated_text(argv: list[str], code: int, needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    captured = capsys.readouterr()
    assert needle in captured.out + captured.err
