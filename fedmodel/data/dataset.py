"""The in-memory data set type, loading by config and a seeded stratified train/test split."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedmodel.config import RunConfig


@dataclass(frozen=True, eq=False)
class Dataset:
    """Features ``x`` (float32, n x d), labels ``y`` (int64 in [0, len(classes))) and names."""

    name: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    feature_names: tuple[str, ...]
    preprocessing: str = "none"
    rows: np.ndarray | None = None  # the rows' numbers in the source file, for messages (None: bundled data)
    zero_based: bool = False

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> Dataset:
        """The rows at ``indices`` (same classes and features)."""
        rows = None if self.rows is None else self.rows[indices]
        return Dataset(self.name, self.x[indices], self.y[indices], self.classes, self.feature_names,
                       self.preprocessing, rows, self.zero_based)


def load_dataset(config: RunConfig) -> Dataset:
    """Load the data set a run names: a bundled one or the user's CSV/Parquet/NPZ file.

    A file is read strictly (any gap refused, naming file, row and column) unless the run cleans
    missing values or names identifier columns: then it is read tolerantly (gaps as NaN, identifier
    columns left out) and every owner cleans its own rows (:mod:`fedmodel.data.prepare`).
    """
    tolerant = config.missing != "error" or bool(config.id_columns)
    return _load_cached(config.dataset, config.data_path, config.label, config.id_columns, tolerant)


@lru_cache(maxsize=4)
def _load_cached(dataset: str, data_path: str, label: str, id_columns: tuple[str, ...] = (),
                 tolerant: bool = False) -> Dataset:
    if dataset == "file" and tolerant:
        from fedmodel.data.cleaning import read_raw_table
        from fedmodel.data.files import encode_labels

        raw = read_raw_table(Path(data_path), label, id_columns)
        classes, y = encode_labels(list(raw.labels))
        return Dataset(Path(data_path).name, raw.x.astype(np.float32), y, classes, raw.feature_names,
                       rows=raw.rows, zero_based=raw.zero_based)
    if dataset == "file":
        from fedmodel.data.files import read_table

        return read_table(Path(data_path), label)
    from fedmodel.data.bundled import load_bundled

    return load_bundled(dataset)


def train_test_split(data: Dataset, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified split into (train indices, test indices), both sorted.

    Every class with at least two rows keeps at least one row on each side.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in range(data.num_classes):
        idx = np.flatnonzero(data.y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
