"""The owner's policy: the run-config allow-list and the local-statistics rule of a deployed node."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmodel.config import ALLOWED, DEPLOYED_RUN_KEYS, RunConfig, refused_run_keys
from fedmodel.data.cleaning import CleaningSpec, FeatureStats
from fedmodel.data.prepare import local_statistics
from fedmodel.errors import PolicyViolation, refusal_rule
from fedmodel.privacy.policy import RULE_LOCAL_STATISTICS, RULE_RUN_CONFIG, PrivacyPolicy, check_run_config

RUN_KEYS = [f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)]
PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


# ---------------------------------------------------------------- the allow-list covers RunConfig exactly
@pytest.mark.parametrize("key", RUN_KEYS)
def test_every_run_config_key_is_classified_for_a_deployed_node(key: str) -> None:
    assert key in DEPLOYED_RUN_KEYS, (f"run-config key {key!r} is not classified in fedmodel.config."
                                      "DEPLOYED_RUN_KEYS: say whether a deployed node accepts it")


def test_the_allow_list_names_only_run_config_keys() -> None:
    assert sorted(set(DEPLOYED_RUN_KEYS) - set(RUN_KEYS)) == []


def test_the_apps_pyproject_defaults_pass_since_flower_fuses_them_into_every_run() -> None:
    defaults = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert set(defaults) == set(RUN_KEYS)  # the FAB carries every key
    check_run_config("site-a", defaults)
    check_run_config("site-a", RunConfig().to_mapping())


REFUSED: list[tuple[str, Any]] = [
    ("inject-faults", "3:no-noise"), ("inject-faults", "0:hang:30"), ("inject-failure-owners", "0"),
    ("audit", True), ("audit", "true"), ("audit-canaries", 50), ("audit-owners", "0,1"),
    ("ray-address", "10.0.0.1:6379"), ("nodes", 2), ("owners-per-round", 2), ("cpus-per-worker", 4),
    ("gpus-per-worker", 0.5), ("ledger", "/elsewhere"), ("partition", "dirichlet:0.1"),
    ("inject-faults", [1, 2]),  # a value that does not even parse counts as set
]


@pytest.mark.parametrize(("key", "value"), REFUSED)
def test_testing_aids_and_simulation_keys_are_refused_naming_the_key(key: str, value: Any) -> None:
    run = {**RunConfig().to_mapping(), key: value}
    with pytest.raises(PolicyViolation) as info:
        check_run_config("site-a", run)
    assert info.value.rule == RULE_RUN_CONFIG and refusal_rule(str(info.value)) == RULE_RUN_CONFIG
    assert f"{key} = " in info.value.detail
    assert "testing aid" in info.value.detail or "simulation setting" in info.value.detail


@pytest.mark.parametrize(("key", "value"), [("inject-faults", ""), ("audit", False), ("audit", "false"),
                                            ("nodes", 0), ("gpus-per-worker", 0), ("partition", "iid")])
def test_a_refused_key_at_its_default_is_accepted(key: str, value: Any) -> None:
    assert refused_run_keys({key: value}) == {}


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(PolicyViolation, match="run-config.*secret-switch: not on this node's allow-list"):
        check_run_config("site-a", {**RunConfig().to_mapping(), "secret-switch": 1})


@pytest.mark.parametrize("key", [k for k, rule in DEPLOYED_RUN_KEYS.items() if rule == ALLOWED])
def test_allowed_keys_pass_with_a_non_default_value(key: str) -> None:
    changed = {"epsilon": 8.0, "delta": 1e-12, "missing": "median", "outliers": "clip", "rounds": 99}
    assert refused_run_keys({key: changed.get(key, "anything")}) == {}


# ---------------------------------------------------------------- local statistics
SPEC = CleaningSpec()
STATS = FeatureStats(count=10.0, mean=np.zeros(2), std=np.ones(2), minimum=-np.ones(2), maximum=np.ones(2))


@pytest.mark.parametrize(("changes", "stats", "impute", "scaled", "options"), [
    ({}, None, None, True, []),
    ({"missing": "drop", "duplicates": "drop", "ids": "hash"}, None, None, True, []),  # each record alone
    ({"outliers": "clip"}, STATS, np.zeros(2), True, ["outliers"]),  # local quartiles whatever the message
    ({"outliers": "drop"}, None, None, True, ["outliers"]),
    ({"missing": "median"}, STATS, np.zeros(2), True, ["missing"]),
    ({"missing": "mode"}, None, None, True, ["missing"]),
    ({"missing": "mean"}, STATS, np.zeros(2), True, []),  # the coordinator's DP means
    ({"missing": "mean"}, None, None, False, ["missing"]),  # the feature-sums query: the owner's own means
    ({"scaling": "zscore"}, STATS, None, True, []),  # federated statistics in the message
    ({"scaling": "zscore"}, None, None, True, ["scaling"]),  # scaling-stats local, or none sent
    ({"scaling": "minmax"}, None, None, False, []),  # the query sums unscaled rows
])
def test_local_statistics_names_each_option_computed_from_the_owners_rows(
        changes: dict[str, str], stats: FeatureStats | None, impute: np.ndarray | None, scaled: bool,
        options: list[str]) -> None:
    uses = local_statistics(dataclasses.replace(SPEC, **changes), stats=stats, impute=impute, scaled=scaled)
    assert [u.split(" = ")[0] for u in uses] == options


def test_local_statistics_are_refused_unless_the_owner_allows_them() -> None:
    uses = ("outliers = 'clip' (quartiles of the owner's rows)",)
    with pytest.raises(PolicyViolation) as info:
        PrivacyPolicy().check_local_statistics("site-a", uses)
    assert info.value.rule == RULE_LOCAL_STATISTICS and "outliers = 'clip'" in info.value.detail
    assert "--allow-local-statistics" in info.value.detail
    PrivacyPolicy().check_local_statistics("site-a", ())
    allowed = PrivacyPolicy(allow_local_statistics=True)
    allowed.check_local_statistics("site-a", uses)
    assert "local statistics allowed" in allowed.describe() and allowed.to_dict()["allow-local-statistics"] is True
