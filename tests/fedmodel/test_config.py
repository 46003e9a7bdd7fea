"""Tests of :mod:`fedmodel.config`: defaults, validation, partition specs, TOML files, round trips."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.errors import ConfigError

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_defaults_equal_pyproject_app_config() -> None:
    table = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert RunConfig().to_mapping() == table


def test_pyproject_app_config_is_a_valid_config() -> None:
    table = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_mapping(table) == RunConfig()


def test_from_mapping_collects_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"clients": 0, "epsilon": -1, "strategy": "x"})
    problems = info.value.problems
    assert len(problems) == 3
    for key in ("clients", "epsilon", "strategy"):
        assert sum(p.startswith(f"{key} = ") for p in problems) == 1, (key, problems)
        assert key in str(info.value)


def test_from_mapping_collects_every_coercion_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"clients": "many", "dp": "maybe", "epochs": 3})
    problems = info.value.problems
    assert len(problems) == 3
    assert any("clients = 'many'" in p for p in problems)
    assert any("dp = 'maybe'" in p for p in problems)
    assert any("unknown key 'epochs'" in p for p in problems)


def test_from_mapping_reports_coercion_and_range_problems_together() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"clients": "many", "strategy": "foo"})
    problems = info.value.problems
    assert len(problems) == 2
    assert any("clients = 'many'" in p for p in problems)
    assert any("strategy = 'foo'" in p for p in problems)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("clients", 0, "clients = 0"),
        ("rounds", 0, "rounds = 0"),
        ("epsilon", 0, "epsilon = 0"),
        ("epsilon", -1, "epsilon = -1"),
        ("epsilon", float("nan"), "epsilon = nan"),
        ("delta", 0, "delta = 0"),
        ("delta", 1, "delta = 1"),
        ("partition", "dirichlet:0", "partition = 'dirichlet:0'"),
        ("partition", "dirichlet:-1", "partition = 'dirichlet:-1'"),
        ("partition", "dirichlet:abc", "partition = 'dirichlet:abc'"),
        ("partition", "pathological:0", "partition = 'pathological:0'"),
        ("partition", "foo", "partition = 'foo'"),
        ("model", "cnn", "model = 'cnn'"),
        ("device", "gpu", "device = 'gpu'"),
        ("batch-size", 0, "batch-size = 0"),
        ("lr", 0, "lr = 0"),
        ("epochs", 3, "unknown key 'epochs'"),
    ],
    ids=lambda v: str(v),
)
def test_bad_value_raises_config_error_naming_the_key(key: str, value: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    assert len(info.value.problems) == 1
    assert needle in info.value.problems[0]
    assert key in str(info.value)


def test_unknown_key_error_names_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"epochs": 3}, source="my.toml")
    assert info.value.problems[0].startswith("my.toml: unknown key 'epochs'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
        ("pathological:2", PartitionSpec("pathological", classes_per_owner=2)),
    ],
)
def test_partition_spec_round_trips_through_str(text: str, expected: PartitionSpec) -> None:
    spec = PartitionSpec.parse(text)
    assert spec == expected
    assert str(spec) == text
    assert PartitionSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["dirichlet:0", "dirichlet:-1", "dirichlet:abc", "dirichlet:inf",
                                  "pathological:0", "pathological:x", "iid:2", "foo", ""])
def test_partition_spec_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        PartitionSpec.parse(text)


def test_from_toml_reads_flat_file(tmp_path: Path) -> None:
    path = tmp_path / "flat.toml"
    path.write_text('clients = 4\npartition = "dirichlet:0.5"\ndp = false\n', encoding="utf-8")
    values = RunConfig.from_toml(path)
    assert values == {"clients": 4, "partition": "dirichlet:0.5", "dp": False}
    config = RunConfig.from_mapping(values)
    assert (config.clients, config.partition, config.dp) == (4, PartitionSpec("dirichlet", alpha=0.5), False)


def test_from_toml_reads_fedmodel_table(tmp_path: Path) -> None:
    path = tmp_path / "table.toml"
    path.write_text('title = "ignored"\n\n[fedmodel]\nrounds = 3\nstrategy = "fedprox"\n', encoding="utf-8")
    values = RunConfig.from_toml(path)
    assert values == {"rounds": 3, "strategy": "fedprox"}
    config = RunConfig.from_mapping(values)
    assert (config.rounds, config.strategy) == (3, "fedprox")


def test_from_toml_malformed_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("clients = = 4\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        RunConfig.from_toml(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_from_toml_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        RunConfig.from_toml(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        RunConfig(),
        RunConfig(dataset="breast-cancer", clients=3, rounds=2, partition=PartitionSpec("dirichlet", alpha=0.5),
                  epsilon=1.5, delta=1e-6, dp=False, strategy="fedadam", model="mlp", local_epochs=2,
                  batch_size=8, lr=0.05, seed=7, device="cpu", test_fraction=0.3, out="runs/roundtrip",
                  inject_failure_owners=(0, 2)),
        RunConfig(dataset="file", data_path="/data/x.csv", label="y",
                  partition=PartitionSpec("pathological", classes_per_owner=2), device="cuda:1"),
    ],
    ids=["defaults", "everything-changed", "file"],
)
def test_to_mapping_from_mapping_round_trip(config: RunConfig) -> None:
    assert RunConfig.from_mapping(config.to_mapping()) == config


def test_round_trip_keeps_full_dirichlet_alpha() -> None:
    config = RunConfig(partition=PartitionSpec("dirichlet", alpha=0.1234567))
    back = RunConfig.from_mapping(config.to_mapping())
    assert back.partition.alpha == 0.1234567
    assert back == config


def test_a_deployed_owner_trains_at_its_own_delta_never_the_runs() -> None:
    from fedmodel.config import NodeSettings

    node = NodeSettings.from_node_config({"data-path": "/data/a.csv", "state-dir": "/state", "delta": 1e-6,
                                          "budget-epsilon": 2.0})
    assert node is not None
    for asked in (1e-12, 1e-6, 1e-3):  # smaller would grief the budget; larger would weaken the guarantee
        assert node.apply(RunConfig(delta=asked, epsilon=5.0)).delta == 1e-6
    assert node.apply(RunConfig(epsilon=5.0)).epsilon == 2.0 and node.apply(RunConfig(epsilon=1.0)).epsilon == 1.0


@pytest.mark.parametrize(("raw", "expected"), [(True, True), ("true", True), (False, False)])
def test_allow_local_statistics_is_an_owner_setting(raw: object, expected: bool) -> None:
    from fedmodel.config import NodeSettings

    node = NodeSettings.from_node_config({"data-path": "/d.csv", "state-dir": "/s", "allow-local-statistics": raw})
    assert node is not None and node.allow_local_statistics is expected
    assert node.policy.allow_local_statistics is expected
    assert not NodeSettings.from_node_config({"data-path": "/d.csv", "state-dir": "/s"}).allow_local_statistics  # type: ignore[union-attr]
