"""Tests of :mod:`fedmodel.cli.options`: the simulate and train options come from the settings' declaration."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from fedmodel.cli import app
from fedmodel.cli.simulate import resolve_config
from fedmodel.config import RunConfig
from fedmodel.config.declare import declared

CLI = Path(__file__).resolve().parents[3] / "fedmodel" / "cli"


def test_no_help_text_types_its_default() -> None:
    typed = [f"{path.name}:{n}" for path in sorted(CLI.glob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if "[default:" in line]
    assert typed == [], "typer shows defaults (show_default=...); do not type them into help texts"


@pytest.mark.parametrize("command", ["simulate", "train"])
def test_every_setting_offered_on_a_command_is_its_option_with_the_declared_help(command: str) -> None:
    click_command = get_command(app).commands[command]  # type: ignore[attr-defined]
    params = {p.name: p for p in click_command.params}
    for f, meta in declared(RunConfig):
        name = f"no_{f.name}" if f.default is True else f.name  # --no-KEY turns off a setting true by default
        if command in meta.commands:
            assert name in params, name
            assert params[name].help.startswith(meta.help)  # type: ignore[attr-defined]
        elif f.name != "resume":  # --resume RUN_DIR: the command's own option, not the setting's flag
            assert name not in params, name


def test_an_option_given_wins_over_the_config_file_and_one_not_given_leaves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_module = importlib.import_module("fedmodel.cli.simulate")
    seen: list[RunConfig] = []

    def stop(config_file: Path | None, given: dict[str, object]) -> RunConfig:
        seen.append(resolve_config(config_file, given))
        raise typer.Exit(0)

    monkeypatch.setattr(simulate_module, "resolve_config", stop)
    toml = tmp_path / "run.toml"
    toml.write_text("rounds = 7\nlr = 0.5\n")
    result = CliRunner().invoke(app, ["simulate", "--config", str(toml), "--lr", "0.25", "--out", "o",
                                      "--model-path", "m"])
    assert result.exit_code == 0, result.output
    assert (seen[0].rounds, seen[0].lr) == (7, 0.25)
    assert Path(seen[0].out).is_absolute() and Path(seen[0].model_path).is_absolute()


def test_no_dp_turns_the_setting_off_and_its_absence_leaves_the_config_files_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    simulate_module = importlib.import_module("fedmodel.cli.simulate")
    seen: list[dict[str, object]] = []

    def stop(config_file: Path | None, given: dict[str, object]) -> RunConfig:
        seen.append(given)
        raise typer.Exit(0)

    monkeypatch.setattr(simulate_module, "resolve_config", stop)
    for args in (["--no-dp"], []):
        assert CliRunner().invoke(app, ["simulate", *args]).exit_code == 0
    assert seen == [{"dp": False}, {}]
