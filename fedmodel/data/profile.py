"""The data profile: per-column counts of a shard (never a value), and the one IQR fence.

Both data-quality summaries are built from :func:`profile_columns`: ``fedmodel data check``
(:func:`fedmodel.data.quality.check_shard`, from a tolerantly read file) and the counts each owner
reports in a run (:func:`fedmodel.data.prepare.quality_counts`, from the rows it trains on).
:func:`iqr_fences` is the interquartile-range rule used by the profile, by cleaning's outlier step
and by the coordinator's public scaling bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def iqr_fences(values: np.ndarray, k: float, *, ignore_nan: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The fences ``q1 - k (q3 - q1)`` and ``q3 + k (q3 - q1)`` per column (along axis 0).

    Parameters
    ----------
    values
        One column (1-D) or rows x columns.
    k
        How many interquartile ranges the fences lie beyond the quartiles.
    ignore_nan
        Quartiles of each column's values other than NaN (``numpy.nanpercentile``); otherwise the
        values must hold no NaN.

    Returns
    -------
    tuple of numpy.ndarray
        The low and the high fence (scalars for a 1-D column).
    """
    q1, q3 = (np.nanpercentile if ignore_nan else np.percentile)(values, [25, 75], axis=0)
    spread = q3 - q1
    return q1 - k * spread, q3 + k * spread


def iqr_outliers(values: np.ndarray, k: float) -> np.ndarray:
    """Per column of ``values`` (rows x columns), its finite cells beyond :func:`iqr_fences` of its finite cells.

    A column with fewer than two finite cells has none. Columns without a gap are done in one
    vectorised call (a cohort of many owners profiles many shards).
    """
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    out = np.zeros(values.shape[1], dtype=np.int64)
    full = counts == values.shape[0]
    if values.shape[0] >= 2 and full.any():
        cols = values[:, full]
        low, high = iqr_fences(cols, k)
        out[full] = np.count_nonzero((cols < low) | (cols > high), axis=0)
    for j in np.flatnonzero(~full & (counts >= 2)):
        column = values[finite[:, j], j]
        low, high = iqr_fences(column, k)
        out[j] = np.count_nonzero((column < low) | (column > high))
    return out


@dataclass(frozen=True)
class ColumnProfile:
    """Counts for one column; no values.

    Attributes
    ----------
    name
        The column's name.
    present, missing
        Cells present, and missing.
    not_numbers, non_finite
        Present cells that are not numbers; infinite numbers.
    distinct
        Distinct present values.
    outliers_iqr
        Finite values beyond the IQR fences of the column's finite values.
    """

    name: str
    present: int
    missing: int
    not_numbers: int
    non_finite: int
    distinct: int
    outliers_iqr: int

    @property
    def constant(self) -> bool:
        """One distinct value in every present cell."""
        return self.distinct == 1


def profile_columns(names: Sequence[str], numbers: np.ndarray, missing: np.ndarray, *, iqr_k: float,
                    text: np.ndarray | None = None, codes: np.ndarray | None = None) -> tuple[ColumnProfile, ...]:
    """Profile every column of a table.

    Parameters
    ----------
    names
        One name per column.
    numbers
        rows x columns, float64: each cell's number, NaN where it holds none.
    missing
        rows x columns: the cell is missing.
    iqr_k
        The IQR rule's multiplier for ``outliers_iqr``.
    text
        rows x columns: the cell is present but not a number (None: no such cell).
    codes
        rows x columns of integers equal where the cells are equal, for ``distinct`` (None: the
        present cells' numbers are compared, and a present cell without a number is a value of its own).

    Returns
    -------
    tuple of ColumnProfile
        One per column, in order.
    """
    present = ~missing
    values = np.asarray(codes, dtype=np.float64) if codes is not None else numbers
    distinct = _distinct(values, present)
    outliers = iqr_outliers(numbers, iqr_k)
    not_numbers = text.sum(axis=0) if text is not None else np.zeros(len(names), dtype=np.int64)
    infinite = np.isinf(numbers).sum(axis=0)
    present_counts, missing_counts = present.sum(axis=0), missing.sum(axis=0)
    return tuple(ColumnProfile(name, int(present_counts[j]), int(missing_counts[j]), int(not_numbers[j]),
                               int(infinite[j]), int(distinct[j]), int(outliers[j])) for j, name in enumerate(names))


def _distinct(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Distinct values among the present cells of each column (-0.0 and 0.0 are one value)."""
    counts = present.sum(axis=0)
    if values.shape[0] == 0:
        return counts.astype(np.int64)
    ordered = np.sort(np.where(present, values, np.nan), axis=0)  # present values first, NaN last
    changes = (ordered[1:] != ordered[:-1]) & (np.arange(1, values.shape[0])[:, None] < counts[None, :])
    return ((counts > 0).astype(np.int64) + changes.sum(axis=0)).astype(np.int64)


def class_counts(labels: Sequence[str | None], declared: Sequence[str] | None) -> tuple[dict[str, int], int]:
    """Rows per label and rows with a label outside ``declared``; missing labels (None) are left out.

    With ``declared`` labels, they come first in their order, zeros included; without, the labels
    found, numbers in numeric order before texts.
    """
    found: dict[str, int] = {}
    for value in labels:
        if value is not None:
            found[value] = found.get(value, 0) + 1
    if declared is None:
        return dict(sorted(found.items(), key=lambda kv: _label_order(kv[0]))), 0
    inside = {v: found.get(v, 0) for v in declared}
    return inside, sum(n for v, n in found.items() if v not in inside)


def _label_order(value: str) -> tuple[int, float, str]:
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value)
    return (0, number, "") if math.isfinite(number) else (1, 0.0, value)
