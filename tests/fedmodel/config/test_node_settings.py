"""Tests of :mod:`fedmodel.config.node`: the node's settings declared once, the node-config keys derived from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedmodel.config import NodeSettings
from fedmodel.config.node import node_default, node_help
from fedmodel.deployment.node import NODE_CONFIG_KEYS


def test_the_node_config_keys_are_the_settings_fields() -> None:
    assert NODE_CONFIG_KEYS == NodeSettings.KEYS
    assert NodeSettings.KEYS == tuple(f.name.replace("_", "-") for f in dataclasses.fields(NodeSettings))
    assert set(NodeSettings._FLOAT_KEYS) == {"budget-epsilon", "delta", "min-noise-multiplier",
                                             "max-epsilon-per-run", "evaluation-noise"}
    assert set(NodeSettings._BOOL_KEYS) == {"allow-no-dp", "require-secure-aggregation", "allow-local-statistics",
                                            "exact-replies"}


def test_settings_round_trip_through_the_node_config(tmp_path: Path) -> None:
    settings = NodeSettings(data_path=str(tmp_path / "d.csv"), state_dir=str(tmp_path / "s"), budget_epsilon=2,
                            id_columns=("a", "b"), max_epsilon_per_run=0.5, exact_replies=True)
    config = settings.to_node_config()
    assert config["budget-epsilon"] == 2.0 and config["id-columns"] == "a,b"
    assert "ledger-key" not in config and "audit-key" not in config and config["label"] == ""
    assert NodeSettings.from_node_config(config) == dataclasses.replace(settings, budget_epsilon=2.0)


def test_node_start_takes_help_and_defaults_from_the_declaration() -> None:
    assert "Gives up" in node_help("allow-no-dp") and node_default("budget-epsilon") == 3.0
    assert node_default("evaluation") == "dp"
