"""Clean a data owner's shard locally: identifiers, missing values, duplicates, outliers and scaling.

:func:`read_raw_table` reads a CSV, Parquet or NPZ shard tolerantly
(:func:`fedmodel.data.reader.read_columns`, as ``fedmodel data check`` does): a missing cell, a cell
that is not a number and an infinite number all become NaN in the feature matrix, identifier columns
are kept apart and never enter it, and a row without a label is refused (labels are never imputed). :func:`clean` then applies a
:class:`CleaningSpec` in a fixed order:

1. identifier columns are dropped, or replaced by HMAC-SHA256 digests under the owner's key;
2. missing cells are refused, or their rows dropped, or filled with the column's mean (local, or
   given, e.g. federated), median or mode;
3. exact duplicate rows (features and label, identifiers ignored) are dropped, the first kept;
4. outliers by the IQR rule on local quartiles are clipped, or their rows dropped;
5. features are z-scored or min-max scaled with given (e.g. federated) or local statistics.

Messages and the :class:`CleaningSummary` hold counts, row numbers and column names only, never a
feature or identifier value. Rows are numbered as in :mod:`fedmodel.data.reader`: the line of a
CSV file (header = 1), the 0-based index of a Parquet or NPZ row.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from fedmodel.data.profile import iqr_fences
from fedmodel.data.reader import Table, read_columns, shard_suffix
from fedmodel.errors import ConfigError, DataValidationError
from fedmodel.fsio import SecretSizeError, atomic_write, load_or_create_secret

MissingMode = Literal["error", "drop", "mean", "median", "mode"]
DuplicatesMode = Literal["keep", "drop"]
OutliersMode = Literal["keep", "clip", "drop"]
ScalingMode = Literal["none", "zscore", "minmax"]
IdsMode = Literal["drop", "hash"]

MISSING_MODES: tuple[str, ...] = get_args(MissingMode)
DUPLICATES_MODES: tuple[str, ...] = get_args(DuplicatesMode)
OUTLIERS_MODES: tuple[str, ...] = get_args(OutliersMode)
SCALING_MODES: tuple[str, ...] = get_args(ScalingMode)
IDS_MODES: tuple[str, ...] = get_args(IdsMode)

HMAC_KEY_BYTES = 32
"""Size of the key :func:`load_or_create_hmac_key` makes and accepts."""
MIN_HMAC_KEY_BYTES = 16
"""The shortest key :func:`clean` accepts for hashing identifiers."""
RELATIVE_SCALE_FLOOR = 1e-9
"""A standard deviation at most this share of the column's mean (in absolute value) counts as zero."""


# --------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class CleaningSpec:
    """What :func:`clean` does to a shard; the defaults change nothing and refuse missing values.

    Attributes
    ----------
    missing
        ``error`` (refuse), ``drop`` (rows), ``mean``, ``median`` or ``mode`` (fill the cells).
    duplicates
        ``keep``, or ``drop`` exact repeats of an earlier row (features and label).
    outliers
        ``keep``, ``clip`` cells to the IQR fences, or ``drop`` rows with a cell beyond them.
    outlier_k
        The fences lie ``outlier_k`` interquartile ranges below the first and above the third quartile.
    scaling
        ``none``, ``zscore`` ((x - mean) / std) or ``minmax`` ((x - min) / (max - min)).
    id_columns
        Identifier columns: never features.
    ids
        ``drop`` identifier columns, or ``hash`` them with HMAC-SHA256 under the owner's key.
    """

    missing: MissingMode = "error"
    duplicates: DuplicatesMode = "keep"
    outliers: OutliersMode = "keep"
    outlier_k: float = 3.0
    scaling: ScalingMode = "none"
    id_columns: tuple[str, ...] = ()
    ids: IdsMode = "drop"

    def validate(self) -> None:
        """Raise ConfigError listing every invalid value."""
        problems = [f"{name} {value!r}: expected {' | '.join(allowed)}" for name, value, allowed in (
            ("missing", self.missing, MISSING_MODES), ("duplicates", self.duplicates, DUPLICATES_MODES),
            ("outliers", self.outliers, OUTLIERS_MODES), ("scaling", self.scaling, SCALING_MODES),
            ("ids", self.ids, IDS_MODES),
        ) if value not in allowed]
        k = self.outlier_k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            problems.append(f"outlier-k {k!r}: expected a positive number")
        if not isinstance(self.id_columns, tuple) or not all(isinstance(c, str) and c for c in self.id_columns):
            problems.append("id-columns: expected a tuple of column names")
        elif len(set(self.id_columns)) != len(self.id_columns):
            problems.append("id-columns: a column is named twice")
        if problems:
            raise ConfigError(problems)

    @property
    def is_noop(self) -> bool:
        """True when cleaning changes nothing (it still refuses missing values)."""
        return (self.missing == "error" and self.duplicates == "keep" and self.outliers == "keep"
                and self.scaling == "none" and not self.id_columns)


# ------------------------------------------------------------------------------------ the raw table
@dataclass(frozen=True, eq=False)
class RawTable:
    """A shard's features, labels and identifiers as read, before cleaning.

    Attributes
    ----------
    source
        The file it was read from.
    x
        float64, rows x features; NaN for a missing cell, a cell that is not a number and an infinity.
    labels
        One normalised label per row (never missing).
    feature_names
        The feature columns in file order (``feature_0`` ... for NPZ); no identifier column.
    ids
        Identifier column -> its cells as text, one per row.
    rows
        Row numbers for messages: CSV lines (header = 1), or 0-based Parquet/NPZ rows.
    zero_based
        True when ``rows`` are 0-based indices.
    not_numbers, non_finite
        Per feature column: present cells that are not numbers; infinite numbers.
    label_column
        The label's column name, for messages ("" when the data has none, such as a bundled data set).
    """

    source: str
    x: np.ndarray = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)
    feature_names: tuple[str, ...]
    ids: Mapping[str, tuple[str, ...]] = field(repr=False)
    rows: np.ndarray = field(repr=False)
    zero_based: bool
    not_numbers: np.ndarray
    non_finite: np.ndarray
    label_column: str = ""  # the label's column name ("" for a data set without one)

    def row(self, index: int) -> str:
        """How a row (0-based index into the table) is named in messages."""
        return f"row {int(self.rows[index])}" + (" (0-based)" if self.zero_based else "")


def read_raw_table(path: Path, label: str, id_columns: Sequence[str] = ()) -> RawTable:
    """Read a CSV, Parquet or NPZ shard for cleaning; cell problems become NaN, not errors.

    Parameters
    ----------
    path
        The shard.
    label
        The label column (the label array's key for NPZ; ``y`` when empty).
    id_columns
        Identifier columns: kept as text in ``ids``, never in ``x``. For NPZ the columns of the
        feature array are named ``feature_0``, ``feature_1``, ...

    Returns
    -------
    RawTable
        Features, labels, identifiers, row numbers and per-column counts.

    Raises
    ------
    DataValidationError
        The file cannot be read (as :func:`fedmodel.data.quality.check_shard` refuses it), a row has
        no label, an identifier column is not in the file, or no feature column is left.
    ConfigError
        The label column is also named an identifier column.
    """
    path = Path(path)
    if not label:
        if shard_suffix(path) != ".npz":
            raise DataValidationError(f"{path}: name the label column; a CSV or Parquet file has no default")
        label = "y"
    ids = tuple(dict.fromkeys(id_columns))
    if label in ids:
        raise ConfigError([f"id-column {label!r}: it is the label column; a label cannot be an identifier"])
    table = read_columns(path, label, mode="tolerant", keep_text=ids)
    names = [c.name for c in table.columns]
    absent = [n for n in ids if n not in names]
    if absent:
        listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise DataValidationError(f"{path}: no identifier column {', '.join(map(repr, absent))}; "
                                  f"the columns are: {listed}")
    features = [c for c in table.columns if c.name != label and c.name not in ids]
    if not features:
        raise DataValidationError(f"{path}: no feature columns besides the label and identifier columns")
    x = np.column_stack([c.numbers for c in features]).astype(np.float64)
    non_finite = np.isinf(x).sum(axis=0).astype(np.int64)
    x[~np.isfinite(x)] = np.nan
    return RawTable(
        source=str(path), x=x, labels=_labels(table, label), feature_names=tuple(c.name for c in features),
        ids={n: tuple("" if v is None else v for v in table.column(n).cells or ()) for n in ids},
        rows=np.asarray(table.row_numbers, dtype=np.int64),
        zero_based=table.zero_based,
        not_numbers=np.asarray([int(c.text.sum()) for c in features], dtype=np.int64), non_finite=non_finite,
        label_column=label,
    )


def _labels(table: Table, label: str) -> tuple[str, ...]:
    missing = [i for i, v in enumerate(table.column(label).labels) if v is None]
    if missing:
        raise DataValidationError(
            f"{table.path}: {table.row(missing[0])}, column {label!r}: the label is missing "
            f"({len(missing)} row(s)); every row needs a label (labels are never imputed: fix or delete the row)"
        )
    return tuple(str(v) for v in table.column(label).labels)


# -------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Per-feature statistics of a table, local or aggregated across owners.

    Attributes
    ----------
    count
        Rows the statistics describe.
    mean, std, minimum, maximum
        Per feature (length d): mean, population standard deviation, smallest and largest value;
        NaN for a column without any finite value.
    present
        Per feature, the finite values counted (None when not known, e.g. for aggregated stats).
    """

    count: float
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    minimum: np.ndarray = field(repr=False)
    maximum: np.ndarray = field(repr=False)
    present: np.ndarray | None = field(default=None, repr=False)


def local_stats(x: np.ndarray) -> FeatureStats:
    """Mean, population std, minimum and maximum per column, ignoring NaN and infinite cells.

    Parameters
    ----------
    x
        rows x features.

    Returns
    -------
    FeatureStats
        ``count`` is the number of rows; a column without a finite value has NaN statistics.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; expected 2-D (rows x features)")
    ok = np.isfinite(x)
    present = ok.sum(axis=0)
    some = present > 0
    safe = np.where(ok, x, 0.0)
    mean = np.divide(safe.sum(axis=0), present, out=np.full(x.shape[1], np.nan), where=some)
    centred = np.where(ok, x - np.where(some, mean, 0.0), 0.0)
    var = np.divide((centred**2).sum(axis=0), present, out=np.full(x.shape[1], np.nan), where=some)
    low = np.where(some, np.where(ok, x, np.inf).min(axis=0, initial=np.inf), np.nan)
    high = np.where(some, np.where(ok, x, -np.inf).max(axis=0, initial=-np.inf), np.nan)
    return FeatureStats(float(x.shape[0]), mean, np.sqrt(var), low, high, present.astype(np.float64))


# ------------------------------------------------------------------------------------ the result
@dataclass(frozen=True)
class CleaningSummary:
    """What :func:`clean` did, in counts only."""

    rows_in: int
    rows_out: int
    cells_missing: int
    cells_imputed: int
    rows_dropped_missing: int
    duplicates_dropped: int
    outliers_clipped: int
    rows_dropped_outliers: int
    id_columns_dropped: int
    id_columns_hashed: int
    scaling: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the counts."""
        return dict(vars(self))


@dataclass(frozen=True, eq=False)
class CleanResult:
    """A cleaned shard.

    Attributes
    ----------
    x
        float32 features, rows x features, every value finite.
    labels
        One normalised label per kept row.
    rows
        The kept rows' numbers in the source (as in :class:`RawTable`).
    hashed_ids
        Identifier column -> hex HMAC-SHA256 of each kept row's identifier (empty unless ``ids = hash``).
    summary
        The counts.
    source
        The file the table was read from.
    zero_based
        True when ``rows`` are 0-based indices.
    """

    x: np.ndarray = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)
    rows: np.ndarray = field(repr=False)
    hashed_ids: Mapping[str, tuple[str, ...]] = field(repr=False)
    summary: CleaningSummary
    source: str = ""
    zero_based: bool = False


@dataclass
class _Counts:
    cells_imputed: int = 0
    rows_dropped_missing: int = 0
    duplicates_dropped: int = 0
    outliers_clipped: int = 0
    rows_dropped_outliers: int = 0


@dataclass
class _Work:
    """The rows still kept (indices into the raw table) and their features."""

    x: np.ndarray
    keep: np.ndarray
    counts: _Counts = field(default_factory=_Counts)

    def select(self, mask: np.ndarray) -> int:
        """Keep the rows where ``mask`` is True; the number dropped."""
        self.x, self.keep = self.x[mask], self.keep[mask]
        return int((~mask).sum())


# --------------------------------------------------------------------------------------- cleaning
def clean(table: RawTable, spec: CleaningSpec, *, stats: FeatureStats | None = None,
          impute_values: np.ndarray | None = None, hmac_key: bytes | None = None) -> CleanResult:
    """Apply ``spec`` to ``table``: identifiers, missing values, duplicates, outliers, scaling (in that order).

    Parameters
    ----------
    table
        The shard from :func:`read_raw_table`.
    spec
        What to do.
    stats
        Statistics for scaling (e.g. federated); None scales with the cleaned table's own.
    impute_values
        One fill value per feature for ``missing = mean`` (e.g. federated means); None uses local means.
    hmac_key
        The owner's secret key for ``ids = hash`` (see :func:`load_or_create_hmac_key`).

    Returns
    -------
    CleanResult
        float32 features with no NaN or infinity, labels, row numbers, hashed identifiers and counts.

    Raises
    ------
    ConfigError
        ``spec`` is invalid, ``hmac_key``, ``stats`` or ``impute_values`` is missing or does not fit.
    DataValidationError
        A missing cell with ``missing = error``, a column with no value to impute from, or no row left.
    """
    spec.validate()
    _check_arguments(table, spec, stats, impute_values, hmac_key)
    hashed = _hash_ids(table, hmac_key) if spec.ids == "hash" and hmac_key is not None else {}
    work = _Work(table.x.copy(), np.arange(table.x.shape[0]))
    cells_missing = int(np.isnan(work.x).sum())
    _handle_missing(table, spec, work, impute_values)
    if spec.duplicates == "drop":
        work.counts.duplicates_dropped = work.select(_first_occurrences(work.x, table.labels, work.keep))
    if spec.outliers != "keep":
        _handle_outliers(table, spec, work)
    x = _scale(table, spec.scaling, work.x, stats)
    summary = CleaningSummary(
        rows_in=table.x.shape[0], rows_out=x.shape[0], cells_missing=cells_missing, **vars(work.counts),
        id_columns_dropped=len(table.ids) if spec.ids == "drop" else 0,
        id_columns_hashed=len(hashed), scaling=spec.scaling,
    )
    return CleanResult(
        x=x, labels=tuple(table.labels[i] for i in work.keep), rows=table.rows[work.keep],
        hashed_ids={n: tuple(v[i] for i in work.keep) for n, v in hashed.items()}, summary=summary,
        source=table.source, zero_based=table.zero_based,
    )


def _check_arguments(table: RawTable, spec: CleaningSpec, stats: FeatureStats | None,
                     impute_values: np.ndarray | None, hmac_key: bytes | None) -> None:
    """ConfigError listing every argument that does not fit the table or the spec."""
    d = table.x.shape[1]
    problems = [f"id-column {n!r} was read as a feature; read the table with id_columns={spec.id_columns!r}"
                for n in spec.id_columns if n in table.feature_names]
    if spec.ids == "hash" and table.ids and (not isinstance(hmac_key, bytes) or len(hmac_key) < MIN_HMAC_KEY_BYTES):
        problems.append(f"ids 'hash': expected a secret key of at least {MIN_HMAC_KEY_BYTES} bytes (a key file)")
    if impute_values is not None:
        values = np.asarray(impute_values, dtype=np.float64)
        if spec.missing != "mean":
            problems.append(f"impute values are used with missing = mean only; missing is {spec.missing!r}")
        elif values.shape != (d,) or not np.isfinite(values).all():
            problems.append(f"impute values: shape {values.shape}; expected {d} finite numbers, one per feature")
    if stats is not None and spec.scaling != "none":
        parts = (stats.mean, stats.std) if spec.scaling == "zscore" else (stats.minimum, stats.maximum)
        if any(np.shape(p) != (d,) or not np.isfinite(p).all() for p in parts):
            problems.append(f"scaling statistics: expected {d} finite values per statistic, one per feature")
    if problems:
        raise ConfigError(problems)


def hmac_hex(key: bytes, text: str) -> str:
    """Hex HMAC-SHA256 of ``text`` (stripped of surrounding space, UTF-8) under ``key``."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(text.strip().encode("utf-8"))
    return mac.finalize().hex()


def _hash_ids(table: RawTable, key: bytes) -> dict[str, tuple[str, ...]]:
    return {name: tuple(hmac_hex(key, v) for v in values) for name, values in table.ids.items()}


def _handle_missing(table: RawTable, spec: CleaningSpec, work: _Work, impute_values: np.ndarray | None) -> None:
    gaps = np.isnan(work.x)
    if not gaps.any():
        return
    if spec.missing == "error":
        r, c = (int(v) for v in np.argwhere(gaps)[0])
        raise DataValidationError(
            f"{table.source}: {table.row(r)}, column {table.feature_names[c]!r}: the value is missing, not a "
            f"number or infinite ({int(gaps.sum())} such cell(s)); expected a number, or set missing = "
            f"{' | '.join(m for m in MISSING_MODES if m != 'error')} to clean it"
        )
    if spec.missing == "drop":
        work.counts.rows_dropped_missing = work.select(~gaps.any(axis=1))
        _require_rows(table, work, "dropping rows with a missing value")
        return
    empty = [table.feature_names[j] for j in np.flatnonzero(gaps.all(axis=0))]
    if empty:
        raise DataValidationError(
            f"{table.source}: column(s) {', '.join(map(repr, empty))}: every value is missing; nothing to "
            f"impute {spec.missing} from (drop the column, or declare it an identifier column)"
        )
    fill = (np.asarray(impute_values, dtype=np.float64) if impute_values is not None
            else _fill_values(work.x, gaps, spec.missing))
    work.x = np.where(gaps, fill[None, :], work.x)
    work.counts.cells_imputed = int(gaps.sum())


def _fill_values(x: np.ndarray, gaps: np.ndarray, mode: str) -> np.ndarray:
    """Per column, the local mean, median or mode (the smallest of the most frequent values)."""
    if mode == "mean":
        return np.nanmean(x, axis=0)
    if mode == "median":
        return np.nanmedian(x, axis=0)
    values = []
    for j in range(x.shape[1]):
        distinct, counts = np.unique(x[~gaps[:, j], j], return_counts=True)
        values.append(distinct[int(np.argmax(counts))])
    return np.asarray(values, dtype=np.float64)


def _require_rows(table: RawTable, work: _Work, step: str) -> None:
    if work.x.shape[0] == 0:
        raise DataValidationError(f"{table.source}: no row left after {step}; expected at least one")


def _first_occurrences(x: np.ndarray, labels: tuple[str, ...], keep: np.ndarray) -> np.ndarray:
    """True for each row not equal (features and label) to an earlier row."""
    codes = np.unique(np.asarray([labels[i] for i in keep], dtype=str), return_inverse=True)[1].reshape(-1)
    matrix = np.column_stack([x + 0.0, codes.astype(np.float64)])  # + 0.0: -0.0 and 0.0 are one value
    first = np.unique(matrix, axis=0, return_index=True)[1]
    mask = np.zeros(x.shape[0], dtype=bool)
    mask[first] = True
    return mask


def _handle_outliers(table: RawTable, spec: CleaningSpec, work: _Work) -> None:
    low, high = iqr_fences(work.x, spec.outlier_k)
    outside = (work.x < low) | (work.x > high)
    if spec.outliers == "clip":
        work.counts.outliers_clipped = int(outside.sum())
        work.x = np.clip(work.x, low, high)
    else:
        work.counts.rows_dropped_outliers = work.select(~outside.any(axis=1))  # type: ignore[arg-type]  # any(axis=1) of a 2-D array is an array
        _require_rows(table, work, "dropping rows with an outlier")


def _scale(table: RawTable, scaling: str, x: np.ndarray, stats: FeatureStats | None) -> np.ndarray:
    """Scaled float32 features; a column without spread is only centred (shifted), never divided by zero."""
    s = stats if stats is not None or scaling == "none" else local_stats(x)
    if s is not None and scaling == "zscore":
        spread = np.asarray(s.std, dtype=np.float64)
        flat = ~(spread > RELATIVE_SCALE_FLOOR * np.abs(s.mean))
        centred = x - s.mean
        rounding = flat & (np.abs(centred) <= RELATIVE_SCALE_FLOOR * np.abs(s.mean))  # the mean up to rounding
        x = np.where(rounding, 0.0, centred) / np.where(flat, 1.0, spread)
    elif s is not None and scaling == "minmax":
        spread = np.asarray(s.maximum, dtype=np.float64) - s.minimum
        x = (x - s.minimum) / np.where(spread > 0, spread, 1.0)
    bad = ~(np.abs(x) <= np.finfo(np.float32).max)
    if bad.any():
        c = int(np.argwhere(bad)[0][1])
        raise DataValidationError(f"{table.source}: column {table.feature_names[c]!r}: a value beyond the "
                                  "float32 range after cleaning; expected values within +-3.4e38")
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------------- keys
def load_or_create_hmac_key(path: Path) -> bytes:
    """The owner's secret key for hashing identifiers: read from ``path``, or made there (mode 0600).

    Parameters
    ----------
    path
        The key file. A new file (see :func:`fedmodel.fsio.load_or_create_secret`: born 0600,
        fsynced, two processes creating it at once get the same key) holds :data:`HMAC_KEY_BYTES`
        random bytes; keep it secret and keep it: the same key gives the same digests in later runs.

    Returns
    -------
    bytes
        The key.

    Raises
    ------
    DataValidationError
        The file has another size or cannot be read or created.
    """
    path = Path(path)
    try:
        return load_or_create_secret(path, HMAC_KEY_BYTES)
    except SecretSizeError as exc:
        raise DataValidationError(f"{path}: the key file holds {exc.found} bytes; expected {HMAC_KEY_BYTES} "
                                  "(a file made by fedmodel; delete it only if no digest made with it is needed)"
                                  ) from None
    except OSError as exc:
        if path.exists():
            raise DataValidationError(f"{path}: cannot read the key file ({exc.strerror})") from None
        raise DataValidationError(f"{path}: cannot create the key file ({exc.strerror}); expected a writable "
                                  "folder") from None


# ------------------------------------------------------------------------------------------ output
def write_clean_table(result: CleanResult, feature_names: Sequence[str], label: str, path: Path) -> None:
    """Write a cleaned shard as CSV: hashed identifier columns, then features, then the label.

    Parameters
    ----------
    result
        From :func:`clean`.
    feature_names
        One name per column of ``result.x``.
    label
        The label column's name.
    path
        The CSV file to write (replaced whole and atomically, mode 0600; never the source file).

    Raises
    ------
    ConfigError
        ``path`` is the source file, or the names do not fit the table.
    """
    path = Path(path)
    names = [*result.hashed_ids, *feature_names, label]
    problems = []
    if result.source and path.resolve() == Path(result.source).resolve():
        problems.append(f"{path}: this is the input file; expected another output file")
    if len(feature_names) != result.x.shape[1]:
        problems.append(f"feature names: {len(feature_names)}; expected {result.x.shape[1]}, one per column")
    if len(set(names)) != len(names):
        problems.append("column names: a name is used twice among identifiers, features and label")
    if problems:
        raise ConfigError(problems)
    ids = list(result.hashed_ids.values())
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(names)
    for i, row in enumerate(result.x):
        writer.writerow([*(column[i] for column in ids), *(str(v) for v in row), result.labels[i]])
    atomic_write(path, text.getvalue().encode("utf-8"), mode=0o600)  # the owner's rows: readable by the owner only
