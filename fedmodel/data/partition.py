"""Split training rows across owners with flwr-datasets' partitioners (on a local table, no hub)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import overload

import numpy as np

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.data.dataset import Dataset, train_test_split
from fedmodel.data.loading import load_dataset
from fedmodel.data.schema import Schema
from fedmodel.errors import ConfigError


def partition_indices(labels: np.ndarray, owners: int, spec: PartitionSpec, seed: int) -> list[np.ndarray]:
    """Row indices (into ``labels``) held by each of ``owners`` owners.

    Uses ``IidPartitioner`` (its shards computed here: :func:`iid_shards`), ``DirichletPartitioner`` or
    ``PathologicalPartitioner`` (with ``class_assignment_mode="first-deterministic"``, so no class is
    dropped) from flwr-datasets.
    Raises ConfigError when the split is impossible (more owners than rows, alpha too small).
    """
    n = int(labels.shape[0])
    if owners > n:
        raise ConfigError([f"clients = {owners}: more owners than training rows ({n}); use at most {n}"])
    if spec.kind == "iid":  # IidPartitioner's contiguous shards, without importing datasets (seconds per process)
        return iid_shards(n, owners)
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import DirichletPartitioner, PathologicalPartitioner

    table = HFDataset.from_dict({"label": labels.astype(np.int64), "row": np.arange(n, dtype=np.int64)})
    partitioner: DirichletPartitioner | PathologicalPartitioner
    if spec.kind == "dirichlet":
        assert spec.alpha is not None  # guaranteed by PartitionSpec.parse
        partitioner = DirichletPartitioner(
            num_partitions=owners, partition_by="label", alpha=spec.alpha,
            min_partition_size=min(10, n // owners), self_balancing=True, seed=seed,
        )
    else:
        assert spec.classes_per_owner is not None
        num_classes = int(labels.max()) + 1
        if spec.classes_per_owner > num_classes:
            raise ConfigError([
                f"partition = {spec}: {spec.classes_per_owner} classes per owner, but the data has {num_classes}"
            ])
        partitioner = PathologicalPartitioner(
            num_partitions=owners, partition_by="label", num_classes_per_partition=spec.classes_per_owner,
            class_assignment_mode="first-deterministic", seed=seed,
        )
    partitioner.dataset = table
    try:
        return [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64) for i in range(owners)]
    except ValueError as exc:
        raise ConfigError([
            f"partition = {spec} with {owners} owners over {n} rows is not possible: {exc} "
            "(use a larger alpha or fewer owners)"
        ]) from None


def iid_shards(rows: int, owners: int) -> list[np.ndarray]:
    """flwr-datasets' ``IidPartitioner``: owner ``i`` holds the ``i``-th of ``owners`` contiguous shards.

    The same rows as its ``dataset.shard(owners, i, contiguous=True)``: the first ``rows % owners``
    shards hold one row more (tests check it against the partitioner itself).
    """
    return [np.asarray(part, dtype=np.int64) for part in np.array_split(np.arange(rows, dtype=np.int64), owners)]


class SampledRows(Sequence[np.ndarray]):
    """``sample:R``: owner ``i`` holds ``R`` distinct rows drawn at random from ``rows``, independently per owner.

    Computed when asked (from ``seed`` and the owner's number alone), so a million registered owners
    cost nothing until they are sampled. Raises ConfigError when ``R`` exceeds the rows there are.
    """

    def __init__(self, rows: np.ndarray, owners: int, per_owner: int, seed: int) -> None:
        if per_owner > len(rows):
            raise ConfigError([f"partition = sample:{per_owner}: each owner draws {per_owner} rows, but the training "
                               f"split has {len(rows)}"])
        self._rows, self._owners, self._per_owner, self._seed = rows, owners, per_owner, seed

    def __len__(self) -> int:
        return self._owners

    @property
    def per_owner(self) -> int:
        """The rows every owner holds (``R``)."""
        return self._per_owner

    @overload
    def __getitem__(self, owner: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, owner: slice) -> Sequence[np.ndarray]: ...

    def __getitem__(self, owner: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        if isinstance(owner, slice):
            return [self[i] for i in range(*owner.indices(self._owners))]
        if not -self._owners <= owner < self._owners:
            raise IndexError(f"owner {owner} of {self._owners}")
        owner %= self._owners
        rng = np.random.default_rng(np.random.SeedSequence([self._seed, 0x5A3D1E, owner]))
        return np.sort(self._rows[rng.choice(len(self._rows), self._per_owner, replace=False)])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(self._owners))


@dataclass(frozen=True, eq=False)
class FederatedSplit:
    """A run's data layout: the coordinator's test rows and each owner's training rows."""

    data: Dataset
    test_rows: np.ndarray
    owner_rows: Sequence[np.ndarray]  # a tuple, or SampledRows for partition sample:R
    schema: Schema

    def owner(self, owner: int) -> Dataset:
        """The shard of one owner."""
        return self.data.subset(self.owner_rows[owner])

    def shard_sizes(self) -> set[int]:
        """The distinct numbers of training rows the owners hold (``sample:R``: R, no shard drawn)."""
        if isinstance(self.owner_rows, SampledRows):
            return {self.owner_rows.per_owner}
        return {len(rows) for rows in self.owner_rows}

    def empty_owners(self) -> list[int]:
        """The owners without a training row (never any with ``sample:R``, which draws R >= 1 each)."""
        if 0 not in self.shard_sizes():
            return []
        return [i for i, rows in enumerate(self.owner_rows) if len(rows) == 0]

    def test(self) -> Dataset:
        """The coordinator's held-out test split."""
        return self.data.subset(self.test_rows)


def federated_split(config: RunConfig) -> FederatedSplit:
    """Load the run's data set, hold out the test split and partition the rest (cached per process)."""
    return _split_cached(config.dataset, config.data_path, config.label, config.test_fraction,
                         config.clients, config.partition, config.seed, config.missing, config.id_columns)


@lru_cache(maxsize=4)
def _split_cached(dataset: str, data_path: str, label: str, test_fraction: float, clients: int,
                  partition: PartitionSpec, seed: int, missing: str = "error",
                  id_columns: tuple[str, ...] = ()) -> FederatedSplit:
    config = RunConfig(dataset=dataset, data_path=data_path, label=label, test_fraction=test_fraction,
                       clients=clients, partition=partition, seed=seed, missing=missing, id_columns=id_columns)
    data = load_dataset(config)
    train_rows, test_rows = train_test_split(data, test_fraction, seed)
    labels = data.classes if dataset == "file" else tuple(str(i) for i in range(data.num_classes))
    if partition.kind == "sample":  # drawn per owner when asked: owners may far outnumber the rows
        assert partition.rows_per_owner is not None  # guaranteed by PartitionSpec.parse
        sampled = SampledRows(train_rows, clients, partition.rows_per_owner, seed)
        return FederatedSplit(data, test_rows, sampled, Schema(data.num_features, labels))
    parts = partition_indices(data.y[train_rows], clients, partition, seed)
    # bundled data sets have their label codes written in files; a user's file its own label values
    return FederatedSplit(data, test_rows, tuple(train_rows[p] for p in parts), Schema(data.num_features, labels))
