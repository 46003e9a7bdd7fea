"""Readers for a user's own table: CSV (header row), Parquet or NPZ. Errors name the file, row and column.

A CSV or Parquet shard has a label column named with ``--label``; every other column is a numeric
feature. Labels may be numbers or strings. Without a schema the classes are their sorted distinct
values; with a run's :class:`~fedmodel.data.schema.Schema` they are encoded against its declared
labels and the feature count is checked. An NPZ shard holds a 2-D feature array (``x``, ``X`` or
``features``) and a 1-D label array whose key is given with ``--label`` (``y`` if empty).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedmodel.data.dataset import Dataset
from fedmodel.data.schema import Schema, normalise_label
from fedmodel.errors import DataValidationError

if TYPE_CHECKING:
    import pyarrow as pa

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".npz")
_NPZ_FEATURE_KEYS: tuple[str, ...] = ("x", "X", "features")
_OTHER_DELIMITERS: tuple[tuple[str, str], ...] = ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars"))


def shard_suffix(path: Path) -> str:
    """The file type of a shard (``.csv``, ``.parquet`` or ``.npz``); DataValidationError if it is none of them."""
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    if not path.is_file():
        raise DataValidationError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataValidationError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; expected .csv, .parquet or .npz"
        )
    return suffix


def read_table(path: Path, label: str, schema: Schema | None = None) -> Dataset:
    """Read a CSV, Parquet or NPZ file into a :class:`Dataset`, or raise DataValidationError."""
    suffix = shard_suffix(path)
    if suffix == ".csv":
        return _read_csv(path, label, schema)
    if suffix == ".parquet":
        return _read_parquet(path, label, schema)
    return _read_npz(path, label or "y", schema)


def _read_csv(path: Path, label: str, schema: Schema | None) -> Dataset:
    if not label:
        raise DataValidationError(f"{path}: a CSV file needs the label column named with --label")
    rows = read_csv_rows(path)
    header = check_header(path, rows[0])
    if label not in header:
        raise DataValidationError(missing_label_message(path, label, header))
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
            raise DataValidationError(ragged_row_message(path, r, len(row), len(header)))
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
                what = "the value is empty" if not cell.strip() else f"{cell!r} is not a number"
                public = "the value is empty" if not cell.strip() else "the value is not a number"
                raise DataValidationError(
                    f"{path}: row {r}, column {header[i]!r}: {what}; expected a number",
                    public=f"{path}: row {r}, column {header[i]!r}: {public}; expected a number",
                ) from None
            if not math.isfinite(value):
                raise DataValidationError(
                    f"{path}: row {r}, column {header[i]!r}: {cell!r} is not a finite number",
                    public=f"{path}: row {r}, column {header[i]!r}: the value is not a finite number",
                )
            x[r - 2, j] = value
            j += 1
    return _dataset(path, x, labels, tuple(features), schema, rows=range(2, len(body) + 2), label=label)


def _read_parquet(path: Path, label: str, schema: Schema | None) -> Dataset:
    import pyarrow as pa

    if not label:
        raise DataValidationError(f"{path}: a Parquet file needs the label column named with --label")
    table = read_parquet_table(path)
    names = check_header(path, list(table.column_names))
    if label not in names:
        raise DataValidationError(missing_label_message(path, label, names, csv_header=False))
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
    return _dataset(path, x, [str(v) for v in raw], tuple(features), schema, rows=None, label=label)


def _read_npz(path: Path, label: str, schema: Schema | None) -> Dataset:
    fkey, x, raw_y = load_npz_arrays(path, label)
    bad = np.argwhere(~np.isfinite(x.astype(np.float64)))
    if len(bad):
        r, c = (int(v) for v in bad[0])
        raise DataValidationError(
            f"{path}: row {r}, column {c} (0-based) of {fkey!r}: {x[r, c]} is not a finite number",
            public=f"{path}: row {r}, column {c} (0-based) of {fkey!r}: the value is not a finite number",
        )
    names = tuple(f"feature_{i}" for i in range(x.shape[1]))
    if schema is not None:
        schema.check_features(x.shape[1], str(path))
    return _dataset(path, x.astype(np.float32), [str(v) for v in raw_y.tolist()], names, schema, rows=None)


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


# ------------------------------------------------------------------ loading shared with data checks
def read_csv_rows(path: Path) -> list[list[str]]:
    """Every record of a UTF-8 CSV file, a leading BOM dropped; DataValidationError if empty or not UTF-8.

    Parameters
    ----------
    path
        The CSV file.

    Returns
    -------
    list of list of str
        The records as :mod:`csv` splits them; a blank line is an empty record, so that record ``i``
        (counted from 1, header included) is line ``i`` of the file unless a quoted field spans lines.
    """
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(utf8_error_message(path, data, bom + exc.start)) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataValidationError(f"{path}: row {reader.line_num}: {exc}; expected comma-separated text") from None
    if not rows or not any(any(cell.strip() for cell in row) for row in rows):
        raise DataValidationError(f"{path}: the file is empty; expected a header row and data rows")
    return rows


def utf8_error_message(path: Path, data: bytes, offset: int) -> str:
    """Where the first byte that is not UTF-8 sits: row (line), column named by the header, byte offset."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    row = data.count(b"\n", 0, offset) + 1
    where = f"row {row}"
    if row > 1:
        header = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").lstrip("\ufeff").strip()
        names = next(csv.reader([header]), [])
        field = data.count(b",", line_start, offset)
        if field < len(names):
            where += f", column {names[field]!r}"
    return f"{path}: {where}: byte {offset} is not UTF-8 text; expected UTF-8 (save the file as UTF-8 CSV)"


def check_header(path: Path, header: list[str]) -> list[str]:
    """The column names stripped of spaces; DataValidationError for an unnamed or repeated column.

    Parameters
    ----------
    path
        The file, named in the message.
    header
        The column names as read.

    Returns
    -------
    list of str
        The stripped names.
    """
    names = [h.strip() for h in header]
    for i, name in enumerate(names):
        if not name:
            hint = " (a trailing delimiter?)" if i == len(names) - 1 else " (an index column written without a name?)"
            raise DataValidationError(
                f"{path}: row 1, column {i + 1}: the column has no name{hint}; expected a name for every column"
            )
        if name in names[:i]:
            raise DataValidationError(
                f"{path}: row 1, column {i + 1}: the name {name!r} is also column {names.index(name) + 1}; "
                "expected unique column names"
            )
    return names


def missing_label_message(path: Path, label: str, header: list[str], *, csv_header: bool = True) -> str:
    """No label column: the names found, or the delimiter when a CSV header looks like one field."""
    hint = delimiter_hint(header) if csv_header else ""
    if hint:
        return f"{path}: row 1: no label column {label!r}{hint}"
    listed = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
    if csv_header:
        return f"{path}: row 1: no label column {label!r}; the header has: {listed}"
    return f"{path}: no label column {label!r}; the columns are: {listed}"


def delimiter_hint(header: list[str]) -> str:
    """A note when a one-field header holds semicolons, tabs or bars: the file uses another delimiter."""
    if len(header) != 1:
        return ""
    for delimiter, name in _OTHER_DELIMITERS:
        if delimiter in header[0]:
            return (f"; the header is one field with {name} in it: the fields seem separated by {delimiter!r}, "
                    "expected ',' (save the file as comma-separated CSV)")
    return ""


def ragged_row_message(path: Path, row: int, fields: int, expected: int) -> str:
    """A row with more or fewer fields than the header."""
    hint = " (an unquoted ',' inside a value?)" if fields > expected else ""
    return f"{path}: row {row} has {fields} fields{hint}; expected {expected} like the header"


def read_parquet_table(path: Path) -> pa.Table:
    """The whole Parquet table, or DataValidationError when the file is not Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).replace(f"Could not open Parquet input source '{path}': ", "")
        raise DataValidationError(
            f"{path}: not a readable Parquet file ({reason}); expected a file written by a Parquet writer"
        ) from None


def load_npz_arrays(path: Path, label: str) -> tuple[str, np.ndarray, np.ndarray]:
    """The feature key, 2-D numeric features and 1-D labels of an NPZ file, loaded without pickle.

    Parameters
    ----------
    path
        The ``.npz`` file.
    label
        The key of the label array.

    Returns
    -------
    tuple of (str, numpy.ndarray, numpy.ndarray)
        The feature array's key, the features (rows x features) and one label per row. Values are
        not checked for being finite.
    """
    fkey, x, y = _load_npz_members(path, label)
    if x.ndim != 2:
        raise DataValidationError(f"{path}: array {fkey!r} has shape {x.shape}; expected 2-D (rows x features)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataValidationError(
            f"{path}: array {label!r} has shape {y.shape}; expected ({x.shape[0]},), one label per row"
        )
    if not np.issubdtype(x.dtype, np.number):
        raise DataValidationError(f"{path}: array {fkey!r} has dtype {x.dtype}; expected numbers")
    if x.shape[0] == 0:
        raise DataValidationError(f"{path}: no rows")
    return fkey, x, y


def _load_npz_members(path: Path, label: str) -> tuple[str, np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and refuse it as one
        raise DataValidationError(f"{path}: not a readable .npz file (not a zip archive); expected numpy.savez output")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            fkey = next((k for k in _NPZ_FEATURE_KEYS if k in keys), None)
            if fkey is None:
                raise DataValidationError(
                    f"{path}: no feature array; expected one of {', '.join(_NPZ_FEATURE_KEYS)}, "
                    f"found {', '.join(keys) or 'no arrays'}"
                )
            if label not in keys:
                raise DataValidationError(f"{path}: no label array {label!r}; found {', '.join(keys)}")
            return fkey, np.asarray(npz[fkey]), np.asarray(npz[label])
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DataValidationError(f"{path}: not a readable .npz file ({exc}); expected numpy.savez output") from None
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataValidationError(
                f"{path}: an array holds Python objects; expected plain numeric arrays (fedmodel never unpickles data)"
            ) from None
        raise DataValidationError(f"{path}: not a readable .npz file ({exc}); expected numpy.savez output") from None
