"""Read a user's own table for training: CSV (header row), Parquet or NPZ, every cell a finite number.

A CSV or Parquet shard has a label column named with ``--label``; every other column is a numeric
feature. Labels may be numbers or strings. Without a schema the classes are their sorted distinct
values; with a run's :class:`~fedmodel.data.schema.Schema` they are encoded against its declared
labels and the feature count is checked. An NPZ shard holds a 2-D feature array (``x``, ``X`` or
``features``) and a 1-D label array whose key is given with ``--label`` (``y`` if empty).

The file is read by :func:`fedmodel.data.reader.read_columns` in strict mode: the first cell that is
missing, not a number or infinite is refused, naming the file, the row and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedmodel.data.dataset import Dataset
from fedmodel.data.reader import read_columns, shard_suffix
from fedmodel.data.schema import Schema, normalise_label
from fedmodel.errors import DataValidationError


def read_table(path: Path, label: str, schema: Schema | None = None) -> Dataset:
    """Read a CSV, Parquet or NPZ file into a :class:`Dataset`, or raise DataValidationError."""
    suffix = shard_suffix(path)
    if not label and suffix != ".npz":
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise DataValidationError(f"{path}: a {kind} file needs the label column named with --label")
    label = label or "y"

    def check_features(names: list[str]) -> None:
        if schema is not None:
            schema.check_features(len(names), str(path), names)

    table = read_columns(path, label, mode="strict", check_features=check_features)
    features = [c for c in table.columns if c.name != label]
    x = np.empty((len(table.row_numbers), len(features)), dtype=np.float32)
    for j, column in enumerate(features):
        x[:, j] = column.numbers
    cells = table.column(label).cells or ()
    if table.file_format == "npz":
        if schema is not None:
            schema.check_features(x.shape[1], str(path))
        return _dataset(path, x, list(cells), tuple(c.name for c in features), schema, rows=None)  # type: ignore[arg-type]  # label cells of a checked table are never None
    if table.file_format == "csv":
        rows = range(2, len(table.row_numbers) + 2)
        return _dataset(path, x, [c.strip() for c in cells], tuple(c.name for c in features), schema, rows, label)  # type: ignore[union-attr]  # label cells of a checked table are never None
    return _dataset(path, x, [str(c) for c in cells], tuple(c.name for c in features), schema, None, label)


def _dataset(path: Path, x: np.ndarray, labels: list[str], features: tuple[str, ...], schema: Schema | None,
             rows: range | None, label: str = "") -> Dataset:
    """Encode the labels (against the schema when given) and build the Dataset."""
    if schema is not None:
        y = np.asarray(schema.encode(labels, str(path), rows, column=label), dtype=np.int64)
        return Dataset(path.name, x, y, schema.labels, features)
    classes, y = encode_labels([normalise_label(v) for v in labels])
    if len(classes) < 2:
        raise DataValidationError(
            f"{path}: the label has a single value {classes[0]!r}; expected at least two classes",
            public=f"{path}: the label has a single value; expected at least two classes",
        )
    return Dataset(path.name, x, y, classes, features)


def encode_labels(labels: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted class names (numerically when all labels are numbers) and the encoded labels."""
    distinct = set(labels)
    try:
        ordered = sorted(distinct, key=float)
    except ValueError:
        ordered = sorted(distinct)
    index = {c: i for i, c in enumerate(ordered)}
    return tuple(ordered), np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))
