"""``fedmodel train`` refuses simulation-only settings before it contacts any coordinator."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli import app


@pytest.mark.parametrize("settings", ["nodes = 2", "nodes = 2\nowners-per-round = 3"], ids=["nodes", "sampling"])
def test_cohort_settings_are_refused_in_a_deployment(tmp_path: Path, settings: str) -> None:
    config = tmp_path / "run.toml"
    config.write_text(f"[fedmodel]\nclients = 5\n{settings}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--coordinator", "127.0.0.1:9", "--insecure", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "simulation settings (cohorts of simulated owners per node)" in result.stderr
