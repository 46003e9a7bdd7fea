"""Config of simulations whose Flower nodes host cohorts of owners (``nodes``, ``owners-per-round``)."""

from __future__ import annotations

import pytest

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.errors import ConfigError


def problems(**values: object) -> str:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    return "\n".join(info.value.problems)


def test_nodes_below_clients_means_cohorts() -> None:
    config = RunConfig.from_mapping({"clients": 1000, "nodes": 2, "owners-per-round": 10})
    assert config.cohorts and config.flower_nodes == 2 and config.min_connected == 2
    plain = RunConfig.from_mapping({"clients": 5, "nodes": 5})
    assert not plain.cohorts and plain.flower_nodes == 5 and plain.min_connected == 5
    assert RunConfig(clients=7).flower_nodes == 7


def test_out_of_range_counts_are_refused_by_name() -> None:
    text = problems(clients=4, nodes=5)
    assert "nodes = 5: expected 0 (one node per owner) or a count in [1, clients = 4]" in text
    assert "owners-per-round = -1" in problems(clients=4, nodes=2, **{"owners-per-round": -1})
    assert "owners-per-round = 3 needs nodes < clients" in problems(clients=4, **{"owners-per-round": 3})


@pytest.mark.parametrize(("key", "value", "named"), [
    ("secure-aggregation", True, "secure-aggregation"),
    ("central-dp", "fixed", "central-dp"),
    ("audit", True, "audit"),
    ("min-clients", "2", "min-clients"),
    ("round-timeout", 30.0, "round-timeout"),
])
def test_what_cohorts_cannot_do_yet_is_refused_by_name(key: str, value: object, named: str) -> None:
    text = problems(clients=6, nodes=2, **{key: value})
    assert f"nodes = 2 (cohorts of owners per node) with {named}: not supported yet" in text


def test_federated_zscore_statistics_and_resumed_sampling_are_refused_with_cohorts() -> None:
    assert "scaling-stats = federated with scaling = zscore" in problems(clients=6, nodes=2, scaling="zscore")
    RunConfig.from_mapping({"clients": 6, "nodes": 2, "scaling": "zscore", "scaling-stats": "local"})
    assert "resume and owners-per-round" in problems(clients=6, nodes=2, resume=True, **{"owners-per-round": 2})


def test_sample_partition_parses_and_prints_back() -> None:
    spec = PartitionSpec.parse("sample:3")
    assert (spec.kind, spec.rows_per_owner, str(spec)) == ("sample", 3, "sample:3")
    for bad in ("sample", "sample:0", "sample:x"):
        with pytest.raises(ValueError, match="sample needs a row count >= 1"):
            PartitionSpec.parse(bad)
    assert "sampled shards are for tables only" in problems(
        dataset="rotten-tomatoes", task="classification", partition="sample:2", **{"model-path": "/m"})
