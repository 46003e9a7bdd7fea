"""``--resume RUN_DIR``: a damaged checkpoint is a clear error naming the file (exit 2), never loaded.

No simulation or training may start: ``_run`` of both commands is replaced by a function that
records the config it was given instead.
"""

from __future__ import annotations

import importlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from fedmodel.server.checkpoint import write_checkpoint
from typer.testing import CliRunner

from fedmodel.cli import app
from fedmodel.config import RunConfig
from fedmodel.report.run_folder import RunFolder

simulate_module = importlib.import_module("fedmodel.cli.simulate")
train_module = importlib.import_module("fedmodel.cli.train")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    configs: list[RunConfig] = []

    def record(config: RunConfig, *args: Any, **kwargs: Any) -> Any:
        configs.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(simulate_module, "_run", record)
    monkeypatch.setattr(simulate_module, "_superlink", lambda config: nullcontext())  # no SuperLink either
    monkeypatch.setattr(train_module, "_run", record)
    return configs


def run_folder(tmp_path: Path) -> Path:
    """A run folder as a crashed run leaves it: config.toml and the checkpoint after round 2."""
    run_dir = tmp_path / "run"
    config = RunConfig(clients=3, rounds=5, out=str(run_dir), run_id="abc123")
    RunFolder(run_dir).create(config.to_mapping())
    state = {"round": 2, "config": config.to_mapping(), "shared": {}, "rng": {"seed": 42, "python": None},
             "recorder": {}}
    write_checkpoint(run_dir, server_round=2, arrays={"0.weight": torch.zeros(10, 64), "0.bias": torch.zeros(10)},
                     strategy_state={}, state=state)
    return run_dir


def resume(*args: str) -> Any:
    return CliRunner().invoke(app, [*args], catch_exceptions=False)


def test_a_sound_checkpoint_resumes_the_run_with_its_own_config(tmp_path: Path, started: list[RunConfig]) -> None:
    run_dir = run_folder(tmp_path)
    resume("simulate", "--resume", str(run_dir))
    assert len(started) == 1
    config = started[0]
    assert config.resume and config.out == str(run_dir) and config.run_id == "abc123" and config.rounds == 5


@pytest.mark.parametrize("damage", ["truncate-model", "edit-state", "drop-manifest"])
@pytest.mark.parametrize("command", [["simulate"], ["train", "--coordinator", "127.0.0.1:9", "--insecure"]],
                         ids=["simulate", "train"])
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path: Path, started: list[RunConfig],
                                                           damage: str, command: list[str]) -> None:
    run_dir = run_folder(tmp_path)
    ckpt = run_dir / "checkpoint" / "round-2"
    if damage == "truncate-model":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
        named = ckpt / "model.safetensors"
    elif damage == "edit-state":
        state = json.loads((ckpt / "state.json").read_text())
        state["round"] = 4
        (ckpt / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
        named = ckpt / "state.json"
    else:
        (ckpt / "manifest.json").unlink()
        named = run_dir / "checkpoint"
    result = resume(*command, "--resume", str(run_dir))
    assert result.exit_code == 2, result.output
    assert str(named) in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert started == []  # never loaded, nothing started


def test_options_that_would_change_the_run_are_refused_with_resume(tmp_path: Path, started: list[RunConfig]) -> None:
    result = resume("simulate", "--resume", str(run_folder(tmp_path)), "--rounds", "7", "--min-clients", "2")
    assert result.exit_code == 2
    assert "--min-clients, --rounds" in " ".join(result.output.split())
    assert started == []


def test_a_completed_run_is_not_resumed(tmp_path: Path, started: list[RunConfig]) -> None:
    run_dir = run_folder(tmp_path)
    (run_dir / "report.json").write_text(json.dumps({"status": "completed"}))
    result = resume("simulate", "--resume", str(run_dir))
    assert result.exit_code == 2 and "completed already" in result.output
    assert started == []


@pytest.mark.parametrize(("value", "problem"), [("0", "expected 'all'"), ("11", "at most clients = 10"),
                                                 ("2.5", "whole number")])
def test_min_clients_is_checked(value: str, problem: str, started: list[RunConfig], tmp_path: Path) -> None:
    result = resume("simulate", "--min-clients", value, "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and problem in " ".join(result.output.split()), result.output
    assert started == []
