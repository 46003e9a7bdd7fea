"""Every ``fedmodel ...`` command of the README and the docs parses against the real CLI, the quick ones run for
real, and every option of every command is documented somewhere on the site."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fedmodel.cli import app

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXAMPLE = "docs/examples/patients.csv"
SCHEMA = "docs/examples/patients.schema.toml"
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def bash_lines(text: str) -> list[str]:
    """The logical lines of the fenced ```bash blocks (indented ones too), backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"^[ \t]*```bash\n(.*?)^[ \t]*```", text, re.S | re.M):
        lines.extend(line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip())
    return lines


def fedmodel_commands() -> list[tuple[str, list[str]]]:
    """(page: line, argv after ``fedmodel``) for every ``fedmodel`` command of a bash block, ``&&`` chains split."""
    found: list[tuple[str, list[str]]] = []
    for page in PAGES:
        for line in bash_lines(page.read_text(encoding="utf-8")):
            words = shlex.split(line, comments=True)
            segments: list[list[str]] = [[]]
            for word in words:
                if word in ("&&", "||", ";", "|"):
                    segments.append([])
                else:
                    segments[-1].append(word)
            for segment in segments:
                if segment[:1] == ["fedmodel"]:
                    found.append((f"{page.relative_to(ROOT)}: {line}", segment[1:]))
    return found


COMMANDS = fedmodel_commands()


def test_the_docs_hold_fedmodel_commands_of_every_kind() -> None:
    firsts = {argv[0] for _, argv in COMMANDS if argv}
    assert {"simulate", "train", "node", "coordinator", "certs", "data", "ledger", "audit-log"} <= firsts, firsts


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_each_documented_command_parses(where: str, argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--help"], env=WIDE)
    assert result.exit_code == 0, f"{where}\n{result.output}"
    assert "Usage:" in result.output


def test_a_command_with_an_unknown_option_does_not_parse() -> None:
    """The check above can fail: an option that no longer exists is an error even with --help."""
    result = CliRunner().invoke(app, ["simulate", "--no-such-option", "3", "--help"], env=WIDE)
    assert result.exit_code == 2


def documented(argv: list[str]) -> bool:
    return any(a == argv for _, a in COMMANDS)


def test_data_check_of_the_example_file_says_it_may_not_train_and_names_the_columns_with_gaps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["data", "check", EXAMPLE, "--label", "diagnosis"]
    assert documented(argv), "the README's data check command changed: update this test"
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, argv, env=WIDE)
    assert result.exit_code == 1, result.output
    assert "may not train" in result.output
    assert "column 'radius': 1 missing value(s) (first at row 554)" in " ".join(result.output.split())


def test_data_check_with_the_example_schema_knows_the_identifier(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["data", "check", EXAMPLE, "--schema", SCHEMA, "--format", "json"]
    assert documented(argv)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, argv, env=WIDE)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["id_columns"] == ["patient_id"] and report["label"] == "diagnosis" and not report["may_train"]
    assert report["rows"] == 569


def test_the_example_file_cleaned_as_the_docs_say_may_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    clean = tmp_path / "patients-clean.csv"
    result = CliRunner().invoke(app, ["data", "clean", EXAMPLE, "--label", "diagnosis", "--id-column", "patient_id",
                                      "--missing", "median", "--out", str(clean)], env=WIDE)
    assert result.exit_code == 0, result.output
    checked = CliRunner().invoke(app, ["data", "check", str(clean), "--label", "diagnosis"], env=WIDE)
    assert checked.exit_code == 0, checked.output
    assert "patient_id" not in clean.read_text(encoding="utf-8").splitlines()[0]


def test_ledger_show_on_a_folder_without_a_ledger_names_the_file_and_creates_nothing(tmp_path: Path) -> None:
    assert any(argv[:2] == ["ledger", "show"] for _, argv in COMMANDS)
    result = CliRunner().invoke(app, ["ledger", "show", "--state-dir", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2
    assert "privacy-ledger.sqlite" in " ".join(result.output.split())
    assert list(tmp_path.iterdir()) == []


def every_option() -> list[tuple[str, str]]:
    """(command path, option) for every option of every ``fedmodel`` command."""
    found: list[tuple[str, str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        for param in command.params:
            found.extend((" ".join(path), o) for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))

    walk(typer.main.get_command(app), [])
    return found


SITE_TEXT = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


@pytest.mark.parametrize(("command", "option"), every_option())
def test_every_option_of_every_command_is_documented_on_the_site(command: str, option: str) -> None:
    assert re.search(re.escape(option) + r"(?![\w-])", SITE_TEXT), (
        f"fedmodel {command} {option} is documented nowhere in README.md or docs/")
