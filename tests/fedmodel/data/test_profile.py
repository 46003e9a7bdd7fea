"""Tests of :mod:`fedmodel.data.profile`: the IQR fence and the per-column counts both quality summaries use."""

from __future__ import annotations

import numpy as np
import pytest

from fedmodel.data.profile import class_counts, iqr_fences, iqr_outliers, profile_columns


def test_iqr_fences_lie_k_ranges_beyond_the_quartiles() -> None:
    low, high = iqr_fences(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 1.5)  # q1 = 2, q3 = 4
    assert (float(low), float(high)) == (-1.0, 7.0)


def test_iqr_fences_ignore_nan_when_asked() -> None:
    x = np.array([[1.0], [2.0], [np.nan], [3.0], [4.0], [5.0]])
    low, high = iqr_fences(x, 1.0, ignore_nan=True)
    assert (float(low[0]), float(high[0])) == (0.0, 6.0)


def test_iqr_outliers_count_per_column_over_finite_cells_only() -> None:
    x = np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 2.0], [4.0, 3.0], [100.0, 400.0]])
    assert iqr_outliers(x, 1.5).tolist() == [1, 1]
    assert iqr_outliers(np.array([[5.0], [np.nan]]), 1.5).tolist() == [0]  # fewer than two values: none


def test_profile_counts_cells_without_values() -> None:
    numbers = np.array([[1.0, np.nan], [np.inf, 2.0], [1.0, np.nan], [-0.0, 2.0]])
    missing = np.array([[False, True], [False, False], [False, False], [False, False]])
    text = np.array([[False, False], [False, False], [False, True], [False, False]])
    a, b = profile_columns(["a", "b"], numbers, missing, iqr_k=1.5, text=text)
    assert (a.present, a.missing, a.not_numbers, a.non_finite, a.distinct) == (4, 0, 0, 1, 3)  # 1, inf, 0
    assert (b.present, b.missing, b.not_numbers, b.distinct, b.constant) == (3, 1, 1, 2, False)  # 2 and a text
    (c,) = profile_columns(["c"], numbers[:, 1:], np.isnan(numbers[:, 1:]), iqr_k=1.5)  # present = numbers
    assert (c.present, c.missing, c.distinct, c.constant) == (2, 2, 1, True)


def test_profile_counts_distinct_cells_by_their_codes_when_given() -> None:
    numbers = np.full((3, 1), np.nan)  # a text column: no numbers, three cells, two distinct texts
    codes = np.array([[0], [1], [0]])
    (p,) = profile_columns(["t"], numbers, np.zeros((3, 1), bool), iqr_k=1.5, text=np.ones((3, 1), bool),
                           codes=codes)
    assert (p.distinct, p.not_numbers, p.constant) == (2, 3, False)


def test_profile_of_an_empty_table() -> None:
    (p,) = profile_columns(["a"], np.empty((0, 1)), np.empty((0, 1), bool), iqr_k=1.5)
    assert (p.present, p.distinct, p.outliers_iqr, p.constant) == (0, 0, 0, False)


@pytest.mark.parametrize(("declared", "expected"), [
    (None, ({"2": 1, "10": 2, "b": 1}, 0)),
    (("10", "3"), ({"10": 2, "3": 0}, 2)),
])
def test_class_counts(declared: tuple[str, ...] | None, expected: tuple[dict[str, int], int]) -> None:
    counts, outside = class_counts(["10", "b", None, "2", "10"], declared)
    assert (counts, outside) == expected
    assert list(counts) == list(expected[0])
