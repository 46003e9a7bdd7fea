"""Describe a data owner's shard before training, without changing it and without reporting any raw value.

:func:`check_shard` reads a CSV, Parquet or NPZ file with :func:`fedmodel.data.reader.read_columns`
in tolerant mode: missing values, text in numeric columns, infinities and duplicates are counted and
described, not refused, so that a person sees every problem at once; the counts come from the data
profile (:mod:`fedmodel.data.profile`). The report holds counts, row numbers, column names and the
label values (the agreed classes) only; no cell of a feature or identifier column ever appears in
it. Input that cannot be described at all (empty, not UTF-8, ragged, not Parquet, a truncated NPZ,
no label column, ...) raises :class:`~fedmodel.errors.DataValidationError` naming the file,
the row and the column.

Rows are numbered as in :mod:`fedmodel.data.reader`: for CSV, the line of the file (header = 1);
for Parquet and NPZ, the 0-based index of the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmodel.data.profile import ColumnProfile, class_counts, profile_columns
from fedmodel.data.reader import Column, Table, read_columns
from fedmodel.data.schema import Schema
from fedmodel.data.schema_file import SchemaFile
from fedmodel.errors import ConfigError, DataValidationError

MAX_CLASSES_LISTED = 50
"""Label columns with more distinct values than this are not listed value by value."""
IMBALANCE_RATIO = 0.1
"""A warning when the smallest class has fewer rows than this share of the largest."""


# --------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class ColumnReport:
    """Counts for one column; no values.

    Attributes
    ----------
    name, role
        The column name and its role: ``feature``, ``label`` or ``id``.
    inferred_type
        ``int``, ``float``, ``bool``, ``text``, ``mixed`` (numbers and text), ``other`` or ``empty``.
    missing, not_numbers, non_finite
        Missing cells, present cells that are not numbers, infinite numbers.
    distinct
        Distinct present values.
    constant
        One distinct value in every present cell.
    outliers_iqr, outliers_z
        Values beyond ``k`` interquartile ranges of the quartiles; values with ``|z|`` above the threshold.
    out_of_range
        Values outside the schema's range for the column.
    """

    name: str
    role: str
    inferred_type: str
    missing: int
    not_numbers: int
    non_finite: int
    distinct: int
    constant: bool
    outliers_iqr: int = 0
    outliers_z: int = 0
    out_of_range: int = 0


@dataclass(frozen=True)
class QualityReport:
    """What :func:`check_shard` found, and whether the shard may train (``reasons`` is empty).

    ``class_counts`` is None when the label column has more than :data:`MAX_CLASSES_LISTED` values.
    """

    path: str
    file_format: str
    label: str
    num_rows: int
    columns: tuple[ColumnReport, ...]
    duplicate_rows: int
    blank_lines: int
    class_counts: tuple[tuple[str, int], ...] | None
    missing_labels: int
    labels_outside_schema: int
    id_columns: tuple[str, ...]
    iqr_k: float
    z: float
    zero_based_rows: bool
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def may_train(self) -> bool:
        """True when nothing stops training on this shard."""
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of counts, names and reasons."""
        return {
            "file": self.path, "format": self.file_format, "label": self.label, "rows": self.num_rows,
            "num_columns": len(self.columns), "row_numbering": "0-based" if self.zero_based_rows else "line",
            "duplicate_rows": self.duplicate_rows, "blank_lines": self.blank_lines,
            "thresholds": {"iqr_k": self.iqr_k, "z": self.z},
            "columns": [vars(c).copy() for c in self.columns],
            "class_balance": None if self.class_counts is None else dict(self.class_counts),
            "missing_labels": self.missing_labels, "labels_outside_schema": self.labels_outside_schema,
            "id_columns": list(self.id_columns), "may_train": self.may_train,
            "reasons": list(self.reasons), "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------------------ what is expected
@dataclass(frozen=True)
class _Expect:
    """What a schema (file or run schema) expects of the shard."""

    source: str = ""
    labels: tuple[str, ...] | None = None
    ids: tuple[str, ...] = ()
    types: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    num_features: int | None = None


# ------------------------------------------------------------------------------------ the entry point
def check_shard(path: Path, *, label: str | None, schema: SchemaFile | Schema | None = None,
                iqr_k: float = 1.5, z: float = 3.0) -> QualityReport:
    """Describe a shard and decide whether it may train; nothing is changed and no value is reported.

    Parameters
    ----------
    path
        A ``.csv``, ``.parquet`` or ``.npz`` file.
    label
        The label column (the label array's key for NPZ, ``y`` when empty); None or empty takes
        the schema file's ``label``.
    schema
        A schema file (columns, types, labels, identifiers, ranges) or a run's schema (feature
        count and labels), or None.
    iqr_k
        Outliers lie more than ``iqr_k`` interquartile ranges below the first or above the third quartile.
    z
        Outliers have a z-score (population standard deviation) above ``z`` in absolute value.

    Returns
    -------
    QualityReport
        Counts per file, column and class, with the reasons it may not train.

    Raises
    ------
    DataValidationError
        The file cannot be described: the message names the file, row, column and what was expected.
    ConfigError
        ``iqr_k`` or ``z`` is not a positive number, or ``label`` contradicts the schema file.
    """
    _check_thresholds(iqr_k, z)
    path = Path(path)
    label = _resolve_label(path, label, schema)
    table = read_columns(path, label, mode="tolerant")
    return _analyse(table, label, _expectations(schema), iqr_k, z)


def _check_thresholds(iqr_k: float, z: float) -> None:
    problems = [f"{name} {value!r}: expected a positive number" for name, value in (("iqr-k", iqr_k), ("z", z))
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0)]
    if problems:
        raise ConfigError(problems)


def _resolve_label(path: Path, label: str | None, schema: SchemaFile | Schema | None) -> str:
    declared = schema.label if isinstance(schema, SchemaFile) else ""
    if label and declared and label != declared:
        raise ConfigError([f"--label {label!r}, but the schema file {schema.source} says label = {declared!r}"])  # type: ignore[union-attr]  # schema is set on this path
    resolved = label or declared or ("y" if path.suffix.lower() == ".npz" else "")
    if not resolved:
        raise DataValidationError(f"{path}: name the label column with --label (or label = in a schema file)")
    return resolved


def _expectations(schema: SchemaFile | Schema | None) -> _Expect:
    if isinstance(schema, SchemaFile):
        return _Expect(schema.source, schema.labels, schema.id_columns, schema.column_types,
                       {name: (lo, hi) for name, lo, hi in schema.ranges})
    if isinstance(schema, Schema):
        return _Expect("the run schema", schema.labels, num_features=schema.num_features)
    return _Expect()


# ------------------------------------------------------------------------------------------ analysis
def _analyse(table: Table, label: str, expect: _Expect, iqr_k: float, z: float) -> QualityReport:
    reasons: list[str] = []
    warnings: list[str] = []
    reasons += _schema_reasons(table, label, expect)
    profiles = _profile(table, iqr_k)
    reports = tuple(_column_report(table, c, p, _role(c.name, label, expect), expect, iqr_k, z, reasons, warnings)
                    for c, p in zip(table.columns, profiles, strict=True))
    label_column = next(c for c in table.columns if c.name == label)
    counts, outside = class_counts(label_column.labels, expect.labels)
    reasons += _label_reasons(table, label_column, expect, counts, outside)
    warnings += _class_warnings(counts)
    duplicates, first_duplicate = _duplicates(table, expect.ids)
    if duplicates:
        warnings.append(f"{duplicates} duplicate row(s) (first at {table.row(first_duplicate)}); drop them before training")
    if table.blank_rows:
        reasons.append(f"{len(table.blank_rows)} blank line(s) (first at row {table.blank_rows[0]}); "
                       "the training reader refuses blank lines: delete them")
    ids = tuple(n for n in expect.ids if any(c.name == n for c in table.columns))
    warnings += [f"column {n!r} is an identifier: not a feature; drop or hash it before training" for n in ids]
    listed = None if len(counts) > MAX_CLASSES_LISTED else tuple(counts.items())
    return QualityReport(
        str(table.path), table.file_format, label, len(table.row_numbers), reports, duplicates,
        len(table.blank_rows), listed, int(label_column.missing.sum()), outside, ids, iqr_k, z,
        table.zero_based, tuple(reasons), tuple(warnings),
    )


def _role(name: str, label: str, expect: _Expect) -> str:
    if name == label:
        return "label"
    return "id" if name in expect.ids else "feature"


def _schema_reasons(table: Table, label: str, expect: _Expect) -> list[str]:
    """Columns the schema declares but the file lacks, columns it does not declare, feature count."""
    names = [c.name for c in table.columns]
    reasons: list[str] = []
    if expect.types and table.file_format != "npz":
        reasons += [f"column {n!r} is declared in {expect.source} but not in the file"
                    for n in expect.types if n not in names]
        reasons += [f"column {n!r} is not declared in {expect.source}; expected only declared columns"
                    for n in names if n not in expect.types]
    features = [n for n in names if n != label and n not in expect.ids]
    wanted = expect.num_features
    if wanted is None and expect.types and table.file_format == "npz":
        wanted = len([n for n in expect.types if n != label and n not in expect.ids])
    if wanted is not None and len(features) != wanted:
        reasons.append(f"{len(features)} feature columns; {expect.source} expects {wanted}")
    if not features:
        reasons.append("no feature columns besides the label and identifier columns")
    return reasons


def _profile(table: Table, iqr_k: float) -> tuple[ColumnProfile, ...]:
    """The data profile of every column (distinct cells by their codes, text and gaps included)."""
    def stack(part: str) -> np.ndarray:
        return np.column_stack([getattr(c, part) for c in table.columns])

    return profile_columns([c.name for c in table.columns], stack("numbers"), stack("missing"), iqr_k=iqr_k,
                           text=stack("text"), codes=stack("codes"))


def _column_report(table: Table, column: Column, profile: ColumnProfile, role: str, expect: _Expect,
                   iqr_k: float, z: float, reasons: list[str], warnings: list[str]) -> ColumnReport:
    """Count one column; append the reasons and warnings it gives (features only)."""
    kind = _inferred_type(column)
    report = ColumnReport(column.name, role, kind, profile.missing, profile.not_numbers, profile.non_finite,
                          profile.distinct, profile.constant)
    if role != "feature":
        return report
    iqr, zs = profile.outliers_iqr, _z_outliers(column.numbers[np.isfinite(column.numbers)], z)
    bounds = expect.ranges.get(column.name)
    outside = _out_of_range(column.numbers, bounds)
    reasons += _feature_reasons(table, column, kind, expect.types.get(column.name), bounds, outside)
    warnings += _feature_warnings(report, iqr, zs, iqr_k, z)
    return ColumnReport(**{**vars(report), "outliers_iqr": iqr, "outliers_z": zs,
                           "out_of_range": int(outside.sum())})


def _inferred_type(column: Column) -> str:
    present = ~column.missing
    if not present.any():
        return "empty"
    if column.native_type is not None:
        return column.native_type
    has_text = bool(column.text[present].any())
    if has_text:
        return "mixed" if not column.text[present].all() else "text"
    finite = column.numbers[np.isfinite(column.numbers)]
    return "int" if np.array_equal(finite, np.round(finite)) and len(finite) == present.sum() else "float"


def _z_outliers(values: np.ndarray, z: float) -> int:
    """Finite values with a z-score (population standard deviation) above ``z`` in absolute value."""
    if values.size < 2:
        return 0
    std = float(values.std())
    return 0 if std == 0 else int(np.count_nonzero(np.abs(values - values.mean()) / std > z))


def _out_of_range(numbers: np.ndarray, bounds: tuple[float, float] | None) -> np.ndarray:
    if bounds is None:
        return np.zeros(len(numbers), dtype=bool)
    with np.errstate(invalid="ignore"):
        return (numbers < bounds[0]) | (numbers > bounds[1])


def _first(table: Table, mask: np.ndarray) -> str:
    return table.row(int(np.argmax(mask)))


def _feature_reasons(table: Table, column: Column, kind: str, declared: str | None,
                     bounds: tuple[float, float] | None, outside: np.ndarray) -> list[str]:
    """Why a feature column stops training: gaps, text, infinities, schema type and range."""
    name, reasons = column.name, []
    if kind == "empty":
        return [f"column {name!r}: every value is missing; expected numbers (drop the column)"]
    if kind in ("text", "other"):
        reasons.append(f"column {name!r}: holds {kind}, not numbers; expected numbers in a feature column "
                       "(or declare it an identifier column)")
    elif column.text.any():
        reasons.append(f"column {name!r}: {int(column.text.sum())} value(s) that are not numbers "
                       f"(first at {_first(table, column.text)}); expected numbers in a feature column")
    if column.missing.any():
        reasons.append(f"column {name!r}: {int(column.missing.sum())} missing value(s) "
                       f"(first at {_first(table, column.missing)}); a feature needs a number in every row")
    infinite = np.isinf(column.numbers)
    if infinite.any():
        reasons.append(f"column {name!r}: {int(infinite.sum())} infinite value(s) "
                       f"(first at {_first(table, infinite)}); expected finite numbers")
    fractional = np.isfinite(column.numbers) & (column.numbers != np.round(column.numbers))
    if declared == "int" and fractional.any():
        reasons.append(f"column {name!r}: {int(fractional.sum())} value(s) that are not whole numbers "
                       f"(first at {_first(table, fractional)}); the schema declares it 'int'")
    if bounds is not None and outside.any():
        reasons.append(f"column {name!r}: {int(outside.sum())} value(s) outside the schema range "
                       f"[{bounds[0]:g}, {bounds[1]:g}] (first at {_first(table, outside)})")
    return reasons


def _feature_warnings(report: ColumnReport, iqr: int, zs: int, iqr_k: float, z: float) -> list[str]:
    warnings = []
    if report.constant:
        warnings.append(f"column {report.name!r} has one value in every row; it carries no information")
    if iqr or zs:
        warnings.append(f"column {report.name!r}: {iqr} outlier(s) by the IQR rule (k = {iqr_k:g}), "
                        f"{zs} by z-score (|z| > {z:g})")
    return warnings


def _label_reasons(table: Table, column: Column, expect: _Expect, counts: dict[str, int],
                   outside: int) -> list[str]:
    name, reasons = column.name, []
    if column.missing.any():
        reasons.append(f"column {name!r}: {int(column.missing.sum())} row(s) without a label "
                       f"(first at {_first(table, column.missing)}); every row needs a label")
    if outside:
        allowed = set(expect.labels or ())
        mask = np.asarray([v is not None and v not in allowed for v in column.labels], dtype=bool)
        reasons.append(f"column {name!r}: {outside} row(s) with a label outside {expect.source}'s labels "
                       f"{', '.join(expect.labels or ())} (first at {_first(table, mask)})")
    classes = sum(1 for n in counts.values() if n > 0)
    if classes < 2 and expect.labels is None:  # with declared labels, one class at one owner is federated life
        reasons.append(f"column {name!r}: {classes} class(es) in the shard; expected at least 2")
    return reasons


def _class_warnings(counts: dict[str, int]) -> list[str]:
    if sum(1 for n in counts.values() if n > 0) == 1 and len(counts) > 1:
        return ["the shard holds one of the declared classes only; it can still train in a federation, "
                "where other owners hold the rest"]
    if len(counts) > MAX_CLASSES_LISTED:
        return [f"the label column has {len(counts)} distinct values (not listed); is it the right column?"]
    present = [n for n in counts.values() if n > 0]
    if len(present) >= 2 and min(present) < IMBALANCE_RATIO * max(present):
        return [f"classes are imbalanced: the smallest has {min(present)} rows, the largest {max(present)}"]
    return []


def _duplicates(table: Table, ids: tuple[str, ...]) -> tuple[int, int]:
    """Rows equal to an earlier row in every column but the identifiers, and the first such row."""
    codes = [c.codes for c in table.columns if c.name not in ids]
    matrix = np.stack(codes, axis=1)  # type: ignore[arg-type]  # every column of a read table has codes
    _, first_index, inverse = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
    repeated = first_index[inverse.reshape(-1)] != np.arange(len(matrix))
    return int(repeated.sum()), int(np.argmax(repeated)) if repeated.any() else 0
