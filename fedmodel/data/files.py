"""Readers for a user's own table: CSV (header row), Parquet or NPZ. Errors name the file, row and column.

A CSV or Parquet shard has a label column named with ``--label``; every other column is a numeric
feature. Labels may be numbers or strings. Without a schema the classes are their sorted distinct
values; with a run's :class:`~fedmodel.data.schema.Schema` they are encoded against its declared
labels and the feature count is checked. An NPZ shard holds a 2-D feature array (``x``, ``X`` or
``features``) and a 1-D label array whose key is given with ``--label`` (``y`` if empty).
"""

from __future__ import annotations

import csv
import math
import zipfile
from pathlib import Path

import numpy as np

from fedmodel.data.dataset import Dataset
from fedmodel.data.schema import Schema, normalise_label
from fedmodel.errors import DataValidationError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".npz")
_NPZ_FEATURE_KEYS: tuple[str, ...] = ("x", "X", "features")


def read_table(path: Path, label: str, schema: Schema | None = None) -> Dataset:
    """Read a CSV, Parquet or NPZ file into a :class:`Dataset`, or raise DataValidationError."""
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    if not path.is_file():
        raise DataValidationError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, label, schema)
    if suffix == ".parquet":
        return _read_parquet(path, label, schema)
    if suffix == ".npz":
        return _read_npz(path, label or "y", schema)
    raise DataValidationError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; expected .csv, .parquet or .npz"
    )


def _read_csv(path: Path, label: str, schema: Schema | None) -> Dataset:
    if not label:
        raise DataValidationError(f"{path}: a CSV file needs the label column named with --label")
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8 CSV") from None
    if not rows:
        raise DataValidationError(f"{path}: the file is empty; expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise DataValidationError(
            f"{path}: no label column {label!r}; the header has: {', '.join(header)}"
        )
    body = rows[1:]
    if not body:
        raise DataValidationError(f"{path}: only a header row; expected data rows below it")
    li = header.index(label)
    features = [h for i, h in enumerate(header) if i != li]
    if not features:
        raise DataValidationError(f"{path}: no feature columns besides the label column {label!r}")
    if schema is not None:
        schema.check_features(len(features), str(path), features)
    x = np.empty((len(body), len(features)), dtype=np.float32)
    labels: list[str] = []
    for r, row in enumerate(body, start=2):  # row numbers as a spreadsheet shows them (header = 1)
        if len(row) != len(header):
            raise DataValidationError(
                f"{path}: row {r} has {len(row)} fields; expected {len(header)} like the header"
            )
        j = 0
        for i, cell in enumerate(row):
            if i == li:
                if not cell.strip():
                    raise DataValidationError(f"{path}: row {r}, column {label!r}: the label is empty")
                labels.append(cell.strip())
                continue
            try:
                value = float(cell)
            except ValueError:
                raise DataValidationError(
                    f"{path}: row {r}, column {header[i]!r}: {cell!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise DataValidationError(
                    f"{path}: row {r}, column {header[i]!r}: {cell!r} is not a finite number"
                )
            x[r - 2, j] = value
            j += 1
    return _dataset(path, x, labels, tuple(features), schema, rows=range(2, len(body) + 2))


def _read_parquet(path: Path, label: str, schema: Schema | None) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not label:
        raise DataValidationError(f"{path}: a Parquet file needs the label column named with --label")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(f"{path}: not a readable Parquet file ({exc})") from None
    names = list(table.column_names)
    if label not in names:
        raise DataValidationError(f"{path}: no label column {label!r}; the columns are: {', '.join(names)}")
    if table.num_rows == 0:
        raise DataValidationError(f"{path}: no rows")
    features = [n for n in names if n != label]
    if not features:
        raise DataValidationError(f"{path}: no feature columns besides the label column {label!r}")
    if schema is not None:
        schema.check_features(len(features), str(path), features)
    x = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                or pa.types.is_boolean(column.type)):
            raise DataValidationError(f"{path}: column {name!r} has type {column.type}; expected numbers")
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise DataValidationError(
                f"{path}: row {int(bad[0])} (0-based), column {name!r}: missing or not a finite number"
            )
        x[:, j] = values
    raw = table.column(label).to_pylist()
    missing = [i for i, v in enumerate(raw) if v is None]
    if missing:
        raise DataValidationError(f"{path}: row {missing[0]} (0-based), column {label!r}: the label is missing")
    return _dataset(path, x, [str(v) for v in raw], tuple(features), schema, rows=None)


def _read_npz(path: Path, label: str, schema: Schema | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            fkey = next((k for k in _NPZ_FEATURE_KEYS if k in keys), None)
            if fkey is None:
                raise DataValidationError(
                    f"{path}: no feature array; expected one of {', '.join(_NPZ_FEATURE_KEYS)}, found {', '.join(keys)}"
                )
            if label not in keys:
                raise DataValidationError(f"{path}: no label array {label!r}; found {', '.join(keys)}")
            x = np.asarray(npz[fkey])
            raw_y = np.asarray(npz[label])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataValidationError(f"{path}: not a readable .npz file ({exc})") from None
    except ValueError:  # not a zip of plain arrays: numpy would need pickle, which is never used
        raise DataValidationError(
            f"{path}: not a readable .npz file of plain numeric arrays (fedmodel never unpickles data)"
        ) from None
    if x.ndim != 2:
        raise DataValidationError(f"{path}: array {fkey!r} has shape {x.shape}; expected 2-D (rows x features)")
    if raw_y.ndim != 1 or raw_y.shape[0] != x.shape[0]:
        raise DataValidationError(
            f"{path}: array {label!r} has shape {raw_y.shape}; expected ({x.shape[0]},), one label per row"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise DataValidationError(f"{path}: array {fkey!r} has dtype {x.dtype}; expected numbers")
    bad = np.argwhere(~np.isfinite(x.astype(np.float64)))
    if len(bad):
        r, c = (int(v) for v in bad[0])
        raise DataValidationError(
            f"{path}: row {r}, column {c} (0-based) of {fkey!r}: {x[r, c]} is not a finite number"
        )
    if x.shape[0] == 0:
        raise DataValidationError(f"{path}: no rows")
    names = tuple(f"feature_{i}" for i in range(x.shape[1]))
    if schema is not None:
        schema.check_features(x.shape[1], str(path))
    return _dataset(path, x.astype(np.float32), [str(v) for v in raw_y.tolist()], names, schema, rows=None)


def _dataset(path: Path, x: np.ndarray, labels: list[str], features: tuple[str, ...], schema: Schema | None,
             rows: range | None) -> Dataset:
    """Encode the labels (against the schema when given) and build the Dataset."""
    if schema is not None:
        y = np.asarray(schema.encode(labels, str(path), rows), dtype=np.int64)
        return Dataset(path.name, x, y, schema.labels, features)
    classes, y = _encode_labels([normalise_label(v) for v in labels])
    if len(classes) < 2:
        raise DataValidationError(
            f"{path}: the label has a single value {classes[0]!r}; expected at least two classes"
        )
    return Dataset(path.name, x, y, classes, features)


def _encode_labels(labels: list[str]) -> tuple[tuple[str, ...], np.ndarray]:
    """Sorted class names (numerically when all labels are numbers) and the encoded labels."""
    distinct = set(labels)
    try:
        ordered = sorted(distinct, key=float)
    except ValueError:
        ordered = sorted(distinct)
    index = {c: i for i, c in enumerate(ordered)}
    return tuple(ordered), np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))
