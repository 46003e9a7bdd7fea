"""Text shards: CSV, Parquet or JSON Lines files with a text column and an optional label column.

Errors name the file, the row and the column. Rows are counted as each format shows them: a CSV
row as a spreadsheet does (the header is row 1), a JSON Lines row by its line number, a Parquet
row from 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmodel.data.reader import check_header, ragged_row_message, read_csv_rows, read_parquet_table
from fedmodel.data.schema import normalise_label
from fedmodel.errors import DataValidationError

TEXT_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".jsonl")


@dataclass(frozen=True)
class TextShard:
    """An owner's texts and, for classification, their labels encoded against ``classes``.

    Attributes
    ----------
    name
        Where the texts came from (file name), for messages.
    texts
        One string per example, never empty.
    labels
        Class indices into ``classes`` (int64, one per text), or None for language modelling.
    classes
        The class names, in index order (empty without labels).
    """

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray | None
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


def read_text_shard(
    path: Path, text_column: str, label_column: str | None = None, *, classes: Sequence[str] | None = None,
) -> TextShard:
    """Read texts (and labels) from a CSV, Parquet or JSON Lines file.

    Parameters
    ----------
    path
        The file (``.csv`` with a header row, ``.parquet`` or ``.jsonl`` with one object per line).
    text_column
        The column holding the text.
    label_column
        The column holding the class label, or None for language modelling.
    classes
        The run's class names; a label outside them is an error. None: the sorted distinct labels.

    Returns
    -------
    TextShard

    Raises
    ------
    DataValidationError
        The file cannot be read, a column is missing, or a cell is empty or not text;
        the message names the file, row and column.
    """
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataValidationError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                                  f"expected {', '.join(TEXT_SUFFIXES)}")
    wanted = [text_column] + ([label_column] if label_column is not None else [])
    rows = {".csv": _csv_rows, ".parquet": _parquet_rows, ".jsonl": _jsonl_rows}[suffix](path, wanted)
    if not rows:
        raise DataValidationError(f"{path}: no data rows")
    texts: list[str] = []
    raw_labels: list[str] = []
    for where, record in rows:
        texts.append(_text_cell(path, where, text_column, record[text_column]))
        if label_column is not None:
            raw_labels.append(_label_cell(path, where, label_column, record[label_column]))
    if label_column is None:
        return TextShard(path.name, tuple(texts), None, ())
    labels, ordered = _encode(path, [w for w, _ in rows], label_column, raw_labels, classes)
    return TextShard(path.name, tuple(texts), labels, ordered)


def _text_cell(path: Path, where: str, column: str, value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataValidationError(f"{path}: {where}, column {column!r}: the text is empty")
    if not isinstance(value, str):
        raise DataValidationError(f"{path}: {where}, column {column!r}: {value!r} is not text")
    return value


def _label_cell(path: Path, where: str, column: str, value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataValidationError(f"{path}: {where}, column {column!r}: the label is empty")
    if isinstance(value, float) and not np.isfinite(value):
        raise DataValidationError(f"{path}: {where}, column {column!r}: the label is missing ({value})")
    if not isinstance(value, str | int | float | bool | np.integer | np.floating):
        raise DataValidationError(f"{path}: {where}, column {column!r}: {value!r} is not a label value")
    return normalise_label(str(value))


def _encode(path: Path, places: list[str], column: str, labels: list[str],
            classes: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if classes is None:
        distinct = set(labels)
        try:
            ordered = tuple(sorted(distinct, key=float))
        except ValueError:
            ordered = tuple(sorted(distinct))
        if len(ordered) < 2:
            raise DataValidationError(f"{path}: column {column!r} has a single label {ordered[0]!r}; "
                                      "expected at least two classes (or pass the run's classes)")
    else:
        ordered = tuple(normalise_label(str(c)) for c in classes)
    index = {c: i for i, c in enumerate(ordered)}
    for where, label in zip(places, labels, strict=True):
        if label not in index:
            raise DataValidationError(f"{path}: {where}, column {column!r}: label {label!r} is not one of "
                                      f"{', '.join(ordered)}")
    return np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels)), ordered


def _missing_column(path: Path, column: str, names: Sequence[str]) -> DataValidationError:
    listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return DataValidationError(f"{path}: no column {column!r}; the columns are: {listed}")


def _csv_rows(path: Path, wanted: list[str]) -> list[tuple[str, dict[str, Any]]]:
    rows = read_csv_rows(path)
    header = check_header(path, rows[0])
    for column in wanted:
        if column not in header:
            raise _missing_column(path, column, header)
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise DataValidationError(ragged_row_message(path, number, len(row), len(header)))
        out.append((f"row {number}", {c: row[header.index(c)] for c in wanted}))
    return out


def _parquet_rows(path: Path, wanted: list[str]) -> list[tuple[str, dict[str, Any]]]:
    table = read_parquet_table(path)
    names = list(table.column_names)
    for column in wanted:
        if column not in names:
            raise _missing_column(path, column, names)
    columns = {c: table.column(c).to_pylist() for c in wanted}
    return [(f"row {i} (0-based)", {c: columns[c][i] for c in wanted}) for i in range(table.num_rows)]


def _jsonl_rows(path: Path, wanted: list[str]) -> list[tuple[str, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"{path}: byte {exc.start} is not UTF-8 text; expected UTF-8 JSON Lines") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"{path}: row {number}: not valid JSON ({exc.msg} at character {exc.pos + 1})"
                                      ) from None
        if not isinstance(record, dict):
            raise DataValidationError(f"{path}: row {number}: expected a JSON object per line, got "
                                      f"{type(record).__name__}")
        for column in wanted:
            if column not in record:
                raise DataValidationError(f"{path}: row {number}, column {column!r}: missing; the row has: "
                                          f"{', '.join(map(str, record)) or '(no fields)'}")
        out.append((f"row {number}", {c: record[c] for c in wanted}))
    return out
