"""The in-memory data set type and a seeded stratified train/test split.

This module imports no other module of :mod:`fedmodel.data`: every reader builds a :class:`Dataset`,
and :mod:`fedmodel.data.loading` picks the reader a run names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
