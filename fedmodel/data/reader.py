"""The one reader of an owner's table (CSV with a header row, Parquet or NPZ), strict or tolerant.

:func:`read_columns` reads a file into a :class:`Table` of :class:`Column` s. Both modes refuse a
file that cannot be read at all (empty, not UTF-8, ragged, not Parquet, a truncated NPZ, no label
column, ...) with a :class:`~fedmodel.errors.DataValidationError` naming the file, row and column.
They differ on a cell that is missing, not a number or infinite:

* ``strict`` (training without cleaning, :func:`fedmodel.data.files.read_table`): the first such
  cell raises, naming the file, the row and the column;
* ``tolerant`` (``fedmodel data check`` and cleaning): the cell is NaN in ``numbers`` and marked
  in the column's ``missing`` or ``text`` mask, so that every problem can be counted at once.

Rows are numbered for messages as a person finds them: for CSV, the line of the file (header = 1);
for Parquet and NPZ, the 0-based index of the row. A public message (``DataValidationError.public``)
never holds a cell's value.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedmodel.data.schema import normalise_label
from fedmodel.errors import DataValidationError

if TYPE_CHECKING:
    import pyarrow as pa

Mode = Literal["strict", "tolerant"]

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".npz")
MISSING_TOKENS: frozenset[str] = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
"""Cell texts (lower-cased, stripped) counted as missing values in a CSV file (tolerant mode)."""
_NPZ_FEATURE_KEYS: tuple[str, ...] = ("x", "X", "features")
_OTHER_DELIMITERS: tuple[tuple[str, str], ...] = ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars"))


# ------------------------------------------------------------------------------------ the table
@dataclass(frozen=True, eq=False)
class Column:
    """One column as read; masks and numbers have one entry per data row.

    Attributes
    ----------
    name
        The column's name (``feature_0`` ... for the columns of an NPZ feature array).
    numbers
        float64: the cell's number, NaN where it holds none. Tolerant mode maps -0.0 to 0.0.
    missing
        The cell is missing (empty, a :data:`MISSING_TOKENS` text, a null, NaN).
    text
        The cell is present but not a number.
    codes
        Integers equal exactly where the cells are equal (NaN equal to NaN), for duplicates and
        distinct counts; None in strict mode.
    native_type
        ``int``, ``float``, ``bool``, ``text`` or ``other`` when the file types its columns (Parquet,
        NPZ features), None for CSV.
    source_type
        The file's own type name for messages (a Parquet type, an NPZ dtype); "" for CSV.
    labels
        Label column only: each label normalised (:func:`~fedmodel.data.schema.normalise_label`),
        None where it is missing.
    cells
        The cells as text, for the label column and the columns named in ``keep_text`` (None for a
        Parquet null); None for other columns.
    """

    name: str
    numbers: np.ndarray
    missing: np.ndarray
    text: np.ndarray
    codes: np.ndarray | None = None
    native_type: str | None = None
    source_type: str = ""
    labels: tuple[str | None, ...] = ()
    cells: tuple[str | None, ...] | None = None


@dataclass(frozen=True, eq=False)
class Table:
    """A shard read by :func:`read_columns`: its columns in file order and its rows' numbers.

    For NPZ the columns are the feature array's (``feature_0`` ...), then the label array.
    ``blank_rows`` are the CSV lines left out as blank (tolerant mode only).
    """

    path: Path
    file_format: str
    columns: tuple[Column, ...]
    row_numbers: np.ndarray
    zero_based: bool
    blank_rows: tuple[int, ...] = ()

    def row(self, index: int) -> str:
        """How a data row (0-based index into the table) is named in messages."""
        return f"row {int(self.row_numbers[index])}" + (" (0-based)" if self.zero_based else "")

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        return next(c for c in self.columns if c.name == name)


# -------------------------------------------------------------------------------- the entry point
def read_columns(path: Path, label: str, *, mode: Mode, keep_text: Sequence[str] = (),
                 check_features: Callable[[list[str]], None] | None = None) -> Table:
    """Read a CSV, Parquet or NPZ shard; ``mode`` says what a bad cell does (see the module).

    Parameters
    ----------
    path
        A ``.csv``, ``.parquet`` or ``.npz`` file.
    label
        The label column (the label array's key for NPZ).
    mode
        ``strict``: raise at the first cell that is missing, not a number or infinite (and, for
        CSV, at a blank line or an empty label). ``tolerant``: mark such cells and read on.
    keep_text
        Columns whose cells are kept as text in ``Column.cells`` (identifier columns).
    check_features
        Called with the feature columns' names of a CSV or Parquet file once its header is read,
        before any cell (a run's schema check); it raises to refuse the file.

    Returns
    -------
    Table
        The columns in file order with their row numbers.

    Raises
    ------
    DataValidationError
        The file cannot be read, or (strict) a cell is bad: the message names file, row and column.
    """
    path = Path(path)
    suffix = shard_suffix(path)
    if suffix == ".csv":
        return _read_csv(path, label, mode, tuple(keep_text), check_features)
    if suffix == ".parquet":
        return _read_parquet(path, label, mode, tuple(keep_text), check_features)
    return _read_npz(path, label, mode, tuple(keep_text))


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


def _codes(values: np.ndarray) -> np.ndarray:
    """Integer codes equal exactly where ``values`` are equal (NaNs are one value)."""
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


def as_number(text: str) -> float | None:
    """``float(text)``, or None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------- CSV
def _read_csv(path: Path, label: str, mode: Mode, keep_text: tuple[str, ...],
              check_features: Callable[[list[str]], None] | None) -> Table:
    strict = mode == "strict"
    rows = read_csv_rows(path)
    header = check_header(path, rows[0])
    if label not in header:
        raise DataValidationError(missing_label_message(path, label, header))
    if strict and len(rows) == 1:
        raise DataValidationError(f"{path}: only a header row; expected data rows below it")
    _require_features(path, header, label)
    if check_features is not None:
        check_features([h for h in header if h != label])
    data, numbers, blank = [], [], []
    ragged: tuple[int, int] | None = None  # (row, fields) of the first row that does not fit the header
    for number, row in enumerate(rows[1:], start=2):
        if not strict and (not row or (len(row) == 1 < len(header) and not row[0].strip())):
            blank.append(number)
        elif len(row) != len(header):
            if not strict:
                raise DataValidationError(ragged_row_message(path, number, len(row), len(header)))
            ragged = (number, len(row))  # strict: a bad cell in an earlier row is named first
            break
        else:
            data.append(row)
            numbers.append(number)
    keep = set(keep_text) | {label}
    columns = tuple(_text_column(name, [row[j] for row in data], name == label, name in keep, strict)
                    for j, name in enumerate(header))
    table = Table(path, "csv", columns, np.asarray(numbers, dtype=np.int64), False, tuple(blank))
    if strict:
        _strict_csv_cells(table, label, data)
        if ragged is not None:
            raise DataValidationError(ragged_row_message(path, ragged[0], ragged[1], len(header)))
    if not data:
        extra = " and blank lines" if blank else ""
        raise DataValidationError(f"{path}: only a header row{extra}; expected data rows below it")
    return table


def _require_features(path: Path, names: list[str], label: str) -> None:
    if len(names) < 2:
        raise DataValidationError(f"{path}: no feature columns besides the label column {label!r}")


def _text_column(name: str, cells: list[str], is_label: bool, keep: bool, strict: bool) -> Column:
    """Numbers and masks of CSV cells; duplicate codes (tolerant); label texts for the label column."""
    numbers = np.full(len(cells), np.nan)
    missing = np.zeros(len(cells), dtype=bool)
    text = np.zeros(len(cells), dtype=bool)
    keys: list[str] = []
    for i, cell in enumerate(cells):
        value = cell.strip()
        number = as_number(value)
        if value.lower() in MISSING_TOKENS or (number is not None and math.isnan(number)):
            missing[i] = True
            keys.append("m")
        elif number is None:
            text[i] = True
            keys.append("t" + value)
        elif strict:
            numbers[i] = number
        else:
            numbers[i] = number + 0.0  # -0.0 and 0.0 are one value
            keys.append("n" + repr(numbers[i]))
    labels = tuple(None if missing[i] else normalise_label(c) for i, c in enumerate(cells)) if is_label else ()
    codes = None if strict else _codes(np.asarray(keys, dtype=str))
    return Column(name, numbers, missing, text, codes, None, "", labels, tuple(cells) if keep else None)


def _strict_csv_cells(table: Table, label: str, data: list[list[str]]) -> None:
    """Raise at the first bad cell in reading order: an empty label, a feature missing, not a number, infinite."""
    first: tuple[int, int] | None = None  # (data row, column)
    for j, column in enumerate(table.columns):
        if column.name == label:
            bad = np.asarray([not row[j].strip() for row in data], dtype=bool)
        else:
            bad = column.missing | column.text | np.isinf(column.numbers)
        if bad.any() and (first is None or int(np.argmax(bad)) < first[0]):
            first = (int(np.argmax(bad)), j)
    if first is None:
        return
    i, j = first
    name, cell, row = table.columns[j].name, data[i][j], int(table.row_numbers[i])
    if name == label:
        raise DataValidationError(f"{table.path}: row {row}, column {label!r}: the label is empty")
    where = f"{table.path}: row {row}, column {name!r}"
    if as_number(cell) is not None:
        raise DataValidationError(f"{where}: {cell!r} is not a finite number",
                                  public=f"{where}: the value is not a finite number")
    what, public = ("the value is empty",) * 2 if not cell.strip() else (f"{cell!r} is not a number",
                                                                         "the value is not a number")
    raise DataValidationError(f"{where}: {what}; expected a number", public=f"{where}: {public}; expected a number")


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


# --------------------------------------------------------------------------------------- Parquet
def _read_parquet(path: Path, label: str, mode: Mode, keep_text: tuple[str, ...],
                  check_features: Callable[[list[str]], None] | None) -> Table:
    strict = mode == "strict"
    table = read_parquet_table(path)
    names = check_header(path, list(table.column_names))
    if label not in names:
        raise DataValidationError(missing_label_message(path, label, names, csv_header=False))
    if strict and table.num_rows == 0:
        raise DataValidationError(f"{path}: no rows")
    _require_features(path, names, label)
    if table.num_rows == 0:
        raise DataValidationError(f"{path}: no rows; expected data rows")
    if check_features is not None:
        check_features([n for n in names if n != label])
    keep = set(keep_text) | {label}
    columns = tuple(_arrow_column(name, table.column(i), name == label, name in keep, strict)
                    for i, name in enumerate(names))
    result = Table(path, "parquet", columns, np.arange(table.num_rows), True)
    if strict:
        _strict_parquet_cells(result, label)
    return result


def _arrow_column(name: str, column: Any, is_label: bool, keep: bool, strict: bool) -> Column:
    """A Parquet column: numeric types as numbers, everything else as text (never reported)."""
    import pyarrow as pa

    kind = _arrow_kind(pa, column.type)
    values = column.to_pylist()
    labels = tuple(None if v is None or str(v).strip() == "" else normalise_label(str(v)) for v in values) \
        if is_label else ()
    cells = tuple(None if v is None else str(v) for v in values) if keep else None
    if kind in ("int", "float", "bool"):
        numbers = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        numbers = numbers if strict else numbers + 0.0
        missing = np.isnan(numbers)
        return Column(name, numbers, missing, np.zeros_like(missing), None if strict else _codes(numbers), kind,
                      str(column.type), labels, cells)
    missing = np.asarray([v is None or (isinstance(v, str) and not v.strip()) for v in values], dtype=bool)
    keys = None if strict else _codes(np.asarray(["m" if m else "t" + str(v) for v, m in zip(values, missing, strict=True)],
                                                 dtype=str))
    return Column(name, np.full(len(values), np.nan), missing, ~missing, keys, kind, str(column.type), labels, cells)


def _arrow_kind(pa: Any, arrow_type: Any) -> str:
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return "text"
    return "other"


def _strict_parquet_cells(table: Table, label: str) -> None:
    """Column by column: a type that is not numeric, then the first cell missing or not finite; then the labels."""
    path = table.path
    for column in table.columns:
        if column.name == label:
            continue
        if column.native_type not in ("int", "float", "bool"):
            raise DataValidationError(f"{path}: column {column.name!r} has type {column.source_type}; "
                                      "expected numbers")
        bad = np.flatnonzero(~np.isfinite(column.numbers))
        if len(bad):
            raise DataValidationError(
                f"{path}: row {int(bad[0])} (0-based), column {column.name!r}: missing or not a finite number"
            )
    missing = [i for i, v in enumerate(table.column(label).cells or ()) if v is None]
    if missing:
        raise DataValidationError(f"{path}: row {missing[0]} (0-based), column {label!r}: the label is missing")


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


# ------------------------------------------------------------------------------------------- NPZ
def _read_npz(path: Path, label: str, mode: Mode, keep_text: tuple[str, ...]) -> Table:
    strict = mode == "strict"
    fkey, x, y = load_npz_arrays(path, label)
    features = x.astype(np.float64)
    if strict:
        bad = np.argwhere(~np.isfinite(features))
        if len(bad):
            r, c = (int(v) for v in bad[0])
            where = f"{path}: row {r}, column {c} (0-based) of {fkey!r}"
            raise DataValidationError(f"{where}: {x[r, c]} is not a finite number",
                                      public=f"{where}: the value is not a finite number")
    else:
        features = features + 0.0
    kind = "int" if np.issubdtype(x.dtype, np.integer) else "float"
    columns = []
    for j in range(x.shape[1]):
        name = f"feature_{j}"
        numbers = features[:, j]
        missing = np.isnan(numbers)
        cells = tuple(str(v) for v in x[:, j].tolist()) if name in keep_text else None
        columns.append(Column(name, numbers, missing, np.zeros_like(missing), None if strict else _codes(numbers),
                              kind, str(x.dtype), (), cells))
    columns.append(_npz_label_column(label, y, strict))
    if not strict and len(columns) < 2:
        raise DataValidationError(f"{path}: array {fkey!r} has no feature columns; expected at least one")
    return Table(path, "npz", tuple(columns), np.arange(x.shape[0]), True)


def _npz_label_column(name: str, y: np.ndarray, strict: bool) -> Column:
    cells = tuple(str(v) for v in y.tolist())
    if np.issubdtype(y.dtype, np.number):
        numbers = y.astype(np.float64) + 0.0
        missing = np.isnan(numbers)
        labels = tuple(None if m else normalise_label(str(v)) for v, m in zip(y.tolist(), missing, strict=True))
        return Column(name, numbers, missing, np.zeros_like(missing), None if strict else _codes(numbers), None,
                      str(y.dtype), labels, cells)
    missing = np.asarray([not t.strip() for t in cells], dtype=bool)
    labels = tuple(None if m else normalise_label(t) for t, m in zip(cells, missing, strict=True))
    return Column(name, np.full(len(cells), np.nan), missing, ~missing,
                  None if strict else _codes(np.asarray(cells, dtype=str)), "text", str(y.dtype), labels, cells)


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
