"""Tests of :func:`fedmodel.metrics.classification_metrics` against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from fedmodel.metrics import classification_metrics


def random_labels(seed: int, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, size=n), rng.integers(0, classes, size=n)


def never_predicted() -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = random_labels(3, 200, 5)
    y_pred = np.where(y_pred == 4, 0, y_pred)  # class 4 occurs in y_true but is never predicted
    assert 4 in y_true and 4 not in y_pred
    return y_true, y_pred


def predicted_but_absent() -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = random_labels(4, 150, 4)
    y_pred[::7] = 6  # class 6 is predicted but absent from y_true (5 occurs in neither)
    assert 6 not in y_true
    return y_true, y_pred


def mostly_right() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 10, size=500)
    y_pred = np.where(rng.random(500) < 0.8, y_true, rng.integers(0, 10, size=500))
    return y_true, y_pred


CASES = {
    "binary-small": lambda: random_labels(0, 7, 2),
    "three-classes": lambda: random_labels(1, 50, 3),
    "ten-classes": lambda: random_labels(2, 1000, 10),
    "never-predicted": never_predicted,
    "predicted-but-absent": predicted_but_absent,
    "mostly-right": mostly_right,
    "all-one-prediction": lambda: (random_labels(6, 40, 3)[0], np.zeros(40, dtype=np.int64)),
    "perfect": lambda: (np.arange(30) % 4, np.arange(30) % 4),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_scikit_learn(case: str) -> None:
    y_true, y_pred = CASES[case]()
    got = classification_metrics(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64))
    expected = {
        "accuracy": accuracy_score(y_true, y_pred),
        "precision": precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall": recall_score(y_true, y_pred, average="macro", zero_division=0),
        "f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(float(value), abs=1e-12, rel=0), key


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.zeros(3, dtype=np.int64), np.zeros(4, dtype=np.int64))


def test_empty_arrays_give_nan() -> None:
    got = classification_metrics(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert set(got) == {"accuracy", "precision", "recall", "f1"}
    assert all(math.isnan(v) for v in got.values())
