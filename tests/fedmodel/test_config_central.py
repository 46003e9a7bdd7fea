"""Central (client-level) DP settings: values checked, combinations the wrappers cannot honour refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError


def problems(**values: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    return info.value.problems


def test_defaults_are_off_and_valid() -> None:
    config = RunConfig.from_mapping({})
    assert config.central_dp == "none"
    fixed = RunConfig.from_mapping({"central-dp": "fixed", "central-noise": "0.8", "central-clip": 2})
    assert (fixed.central_dp, fixed.central_noise, fixed.central_clip) == ("fixed", 0.8, 2.0)
    assert RunConfig.from_mapping({"central-dp": "adaptive", "central-noise": 0.3, "strategy": "fedprox"})


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("central-dp", "local", "none | fixed | adaptive"),
    ("central-noise", 0, "noise multiplier > 0"),
    ("central-noise", float("nan"), "noise multiplier > 0"),
    ("central-clip", -1, "clipping norm > 0"),
    ("central-target-quantile", 1.5, "[0, 1]"),
    ("central-clip-lr", 0, "learning rate > 0"),
    ("central-count-stddev", -0.1, ">= 0"),
    ("central-noise", "lots", "expected a number"),
])
def test_bad_value_names_the_key(key: str, value: Any, needle: str) -> None:
    found = problems(**{"central-dp": "fixed", key: value})
    assert any(f"{key} = " in p and needle in p for p in found), found


@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean:0.2", "krum:1", "multikrum:1"])
def test_robust_aggregation_is_refused_naming_both_keys(aggregation: str) -> None:
    found = problems(**{"central-dp": "fixed", "aggregation": aggregation, "clients": 10})
    assert any("central-dp = 'fixed'" in p and f"aggregation = '{aggregation}'" in p for p in found), found


def test_fedadam_is_refused_and_fedprox_allowed() -> None:
    found = problems(**{"central-dp": "adaptive", "central-noise": 0.3, "strategy": "fedadam"})
    assert any("central-dp = 'adaptive'" in p and "strategy = 'fedadam'" in p for p in found), found
    assert RunConfig.from_mapping({"central-dp": "fixed", "strategy": "fedprox"}).strategy == "fedprox"


def test_adaptive_noise_must_stay_below_twice_the_count_stddev() -> None:
    found = problems(**{"central-dp": "adaptive", "central-noise": 1.0, "clients": 10})  # clients / 20 = 0.5
    assert any("central-noise = 1.0" in p and "central-count-stddev = 0.5 (clients / 20)" in p for p in found)
    assert RunConfig.from_mapping({"central-dp": "adaptive", "central-noise": 1.0, "central-count-stddev": 0.6})


def test_text_runs_refuse_central_dp(tmp_path: Any) -> None:
    found = problems(**{"central-dp": "fixed", "task": "classification", "dataset": "rotten-tomatoes",
                        "model-path": str(tmp_path), "lr": 0.005})
    assert any("central-dp = 'fixed' with task = 'classification'" in p for p in found), found


def test_round_trips_through_the_mapping() -> None:
    config = RunConfig.from_mapping({"central-dp": "adaptive", "central-noise": 0.4, "central-clip": 0.1,
                                     "central-target-quantile": 0.7, "central-clip-lr": 0.1,
                                     "central-count-stddev": 0.5})
    assert RunConfig.from_mapping(config.to_mapping()) == config
