"""Data: bundled real data sets, shard readers, train/test split and partitioning across owners."""

from fedmodel.data.dataset import Dataset, train_test_split
from fedmodel.data.loading import load_dataset
from fedmodel.data.partition import FederatedSplit, federated_split, partition_indices

__all__ = ["Dataset", "FederatedSplit", "federated_split", "load_dataset", "partition_indices", "train_test_split"]
