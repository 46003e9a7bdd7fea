"""Tests of :mod:`fedmodel.data.partition` on the bundled digits training split."""

from __future__ import annotations

import numpy as np
import pytest

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.data import federated_split, load_dataset, partition_indices, train_test_split
from fedmodel.data.partition import FederatedSplit, iid_shards
from fedmodel.errors import ConfigError

OWNERS = 10
SPECS = ["iid", "dirichlet:0.5", "pathological:2"]


@pytest.fixture(scope="module")
def train_labels() -> np.ndarray:
    config = RunConfig()
    data = load_dataset(config)
    train_rows, _ = train_test_split(data, config.test_fraction, config.seed)
    return data.y[train_rows]


@pytest.fixture(scope="module")
def partitions(train_labels: np.ndarray) -> dict[str, list[np.ndarray]]:
    return {spec: partition_indices(train_labels, OWNERS, PartitionSpec.parse(spec), 42) for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS)
def test_owners_get_disjoint_nonempty_index_sets(partitions: dict[str, list[np.ndarray]],
                                                 train_labels: np.ndarray, spec: str) -> None:
    parts = partitions[spec]
    assert len(parts) == OWNERS
    assert all(len(p) > 0 for p in parts)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined), "an index is held by two owners (or twice by one)"
    assert joined.min() >= 0 and joined.max() < len(train_labels)
    if spec == "iid":
        np.testing.assert_array_equal(np.sort(joined), np.arange(len(train_labels)))


def test_pathological_owners_hold_at_most_k_classes_and_no_class_is_dropped(
        partitions: dict[str, list[np.ndarray]], train_labels: np.ndarray) -> None:
    parts = partitions["pathological:2"]
    held = [set(train_labels[p].tolist()) for p in parts]
    assert all(1 <= len(h) <= 2 for h in held), held
    assert set().union(*held) == set(train_labels.tolist())


def test_dirichlet_is_label_skewed(partitions: dict[str, list[np.ndarray]], train_labels: np.ndarray) -> None:
    """With alpha 0.5 the owners' class mixes differ clearly; iid shards are near the global mix."""
    def worst_share_gap(parts: list[np.ndarray]) -> float:
        overall = np.bincount(train_labels, minlength=10) / len(train_labels)
        return max(np.abs(np.bincount(train_labels[p], minlength=10) / len(p) - overall).max() for p in parts)

    assert worst_share_gap(partitions["dirichlet:0.5"]) > 2 * worst_share_gap(partitions["iid"])


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_gives_identical_partition(partitions: dict[str, list[np.ndarray]],
                                             train_labels: np.ndarray, spec: str) -> None:
    again = partition_indices(train_labels, OWNERS, PartitionSpec.parse(spec), 42)
    assert len(again) == OWNERS
    for a, b in zip(partitions[spec], again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_seed_gives_other_dirichlet_partition(partitions: dict[str, list[np.ndarray]],
                                                    train_labels: np.ndarray) -> None:
    other = partition_indices(train_labels, OWNERS, PartitionSpec.parse("dirichlet:0.5"), 7)
    assert any(not np.array_equal(a, b) for a, b in zip(partitions["dirichlet:0.5"], other, strict=True))


def test_more_owners_than_rows_raises_config_error() -> None:
    labels = np.array([0, 1, 0, 1, 2], dtype=np.int64)
    with pytest.raises(ConfigError) as info:
        partition_indices(labels, 6, PartitionSpec("iid"), 0)
    assert "clients = 6" in str(info.value)


def test_pathological_more_classes_than_data_raises_config_error(train_labels: np.ndarray) -> None:
    with pytest.raises(ConfigError) as info:
        partition_indices(train_labels, OWNERS, PartitionSpec.parse("pathological:11"), 0)
    assert "pathological:11" in str(info.value)


def test_federated_split_iid_covers_every_row_once() -> None:
    config = RunConfig()
    split = federated_split(config)
    n = len(split.data)
    assert n == 1797
    owner_rows = np.concatenate(split.owner_rows)
    everything = np.concatenate([split.test_rows, owner_rows])
    assert len(np.intersect1d(split.test_rows, owner_rows)) == 0
    assert len(np.unique(everything)) == len(everything)
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))
    assert len(split.owner_rows) == config.clients
    assert all(len(r) > 0 for r in split.owner_rows)


def test_federated_split_test_split_is_stratified() -> None:
    config = RunConfig()
    split = federated_split(config)
    test = split.test()
    counts = np.bincount(test.y, minlength=split.data.num_classes)
    assert np.all(counts > 0), counts
    overall = np.bincount(split.data.y) / len(split.data)
    np.testing.assert_allclose(counts / len(test), overall, atol=0.01)
    assert abs(len(test) - config.test_fraction * len(split.data)) <= split.data.num_classes


def test_federated_split_owner_shard_matches_rows() -> None:
    split = federated_split(RunConfig())
    shard = split.owner(3)
    np.testing.assert_array_equal(shard.x, split.data.x[split.owner_rows[3]])
    np.testing.assert_array_equal(shard.y, split.data.y[split.owner_rows[3]])


def iid_partitioner_rows(rows: int, owners: int) -> list[np.ndarray]:
    """The oracle: flwr-datasets' own IidPartitioner over a table of row numbers."""
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=owners)
    partitioner.dataset = HFDataset.from_dict({"row": np.arange(rows, dtype=np.int64)})
    return [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64) for i in range(owners)]


@pytest.mark.parametrize(("rows", "owners"), [(1437, 10), (1437, 1437), (1438, 7), (7, 3), (1, 1), (1000, 999)])
def test_iid_shards_are_the_iid_partitioners(rows: int, owners: int) -> None:
    got = iid_shards(rows, owners)
    assert len(got) == owners
    for mine, theirs in zip(got, iid_partitioner_rows(rows, owners), strict=True):
        np.testing.assert_array_equal(mine, theirs)
        assert mine.dtype == np.int64


def test_iid_partition_is_the_iid_partitioners(train_labels: np.ndarray) -> None:
    got = partition_indices(train_labels, OWNERS, PartitionSpec.parse("iid"), seed=42)
    expected = iid_partitioner_rows(len(train_labels), OWNERS)
    assert len(got) == OWNERS
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_sample_partition_draws_each_owners_rows_on_demand_and_the_same_each_time() -> None:
    config = RunConfig(clients=1_000_000, partition=PartitionSpec.parse("sample:3"))
    split = federated_split(config)
    assert len(split.owner_rows) == 1_000_000 and split.empty_owners() == [] and split.shard_sizes() == {3}
    train = set(np.setdiff1d(np.arange(len(split.data)), split.test_rows).tolist())
    first, last = split.owner_rows[0], split.owner_rows[999_999]
    assert len(first) == len(set(first.tolist())) == 3 and set(first.tolist()) <= train  # distinct training rows
    assert np.array_equal(first, split.owner_rows[0]) and np.array_equal(last, split.owner_rows[-1])
    assert len(split.owner(17)) == 3
    drawn = np.concatenate([split.owner_rows[i] for i in range(2000)])
    assert len(set(drawn.tolist())) > 0.7 * len(train)  # owners draw independently: they cover the rows
    with pytest.raises(IndexError):
        split.owner_rows[1_000_000]


def test_sample_partition_with_more_rows_than_there_are_is_refused() -> None:
    with pytest.raises(ConfigError, match="each owner draws 5000 rows, but the training split has"):
        federated_split(RunConfig(clients=3, partition=PartitionSpec.parse("sample:5000")))


def test_shard_sizes_and_empty_owners_of_a_listed_partition() -> None:
    split = federated_split(RunConfig(clients=3))
    sizes = {len(rows) for rows in split.owner_rows}
    assert split.shard_sizes() == sizes and 0 not in sizes and split.empty_owners() == []
    emptied = FederatedSplit(split.data, split.test_rows, (split.owner_rows[0], np.empty(0, np.int64),
                                                           split.owner_rows[2]), split.schema)
    assert 0 in emptied.shard_sizes() and emptied.empty_owners() == [1]
