"""Tests of the bundled real data sets (read from scikit-learn's package data, no download)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmodel.config import RunConfig
from fedmodel.data import load_dataset
from fedmodel.data.bundled import load_bundled
from fedmodel.errors import DataValidationError


def test_digits() -> None:
    data = load_dataset(RunConfig(dataset="digits"))
    assert data.name == "digits"
    assert data.x.shape == (1797, 64)
    assert data.x.dtype == np.float32
    assert data.y.shape == (1797,)
    assert data.y.dtype == np.int64
    assert data.num_classes == 10
    assert data.classes == tuple(str(i) for i in range(10))
    np.testing.assert_array_equal(np.unique(data.y), np.arange(10))
    assert np.all(np.isfinite(data.x))
    assert data.x.min() >= -1.0 and data.x.max() <= 1.0
    assert data.x.min() == -1.0 and data.x.max() == 1.0  # pixel 0 and pixel 16 both occur
    assert len(data.feature_names) == 64


def test_breast_cancer() -> None:
    data = load_dataset(RunConfig(dataset="breast-cancer"))
    assert data.name == "breast-cancer"
    assert data.x.shape == (569, 30)
    assert data.x.dtype == np.float32
    assert data.y.shape == (569,)
    assert data.num_classes == 2
    assert data.classes == ("malignant", "benign")
    np.testing.assert_array_equal(np.bincount(data.y), [212, 357])  # 212 malignant, 357 benign
    assert np.all(np.isfinite(data.x))
    assert len(data.feature_names) == 30


def test_unknown_bundled_name() -> None:
    with pytest.raises(DataValidationError, match="mnist"):
        load_bundled("mnist")
