"""Local cleaning: reading raw shards, every mode with exact arrays, identifiers, counts and the key file."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedmodel.data.cleaning import (
    DUPLICATES_MODES,
    OUTLIERS_MODES,
    SCALING_MODES,
    CleaningSpec,
    FeatureStats,
    RawTable,
    clean,
    load_or_create_hmac_key,
    local_stats,
    read_raw_table,
    write_clean_table,
)
from fedmodel.errors import ConfigError, DataValidationError

# Lines 2-6. Column a: row 3 empty; b: row 4 text, row 5 infinite. pid: numeric identifiers.
MESSY = (
    "pid,a,b,y\n"
    "900001,1,10,0\n"
    "900002,,20,1\n"
    "900003,2,x,0\n"
    "900004,9,inf,1\n"
    "900005,2,30,0\n"
)
PIDS = ("900001", "900002", "900003", "900004", "900005")
KEY = bytes(range(32))


def write(tmp_path: Path, text: str, name: str = "shard.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def messy(tmp_path: Path) -> RawTable:
    return read_raw_table(write(tmp_path, MESSY), "y", ["pid"])


def table_of(x: list[list[float]], labels: list[str]) -> RawTable:
    """A raw table built in memory (rows numbered as CSV lines)."""
    data = np.asarray(x, dtype=np.float64)
    d = data.shape[1]
    return RawTable("mem.csv", data, tuple(labels), tuple(f"f{j}" for j in range(d)), {},
                    np.arange(2, len(labels) + 2), False, np.zeros(d, np.int64), np.zeros(d, np.int64))


# -------------------------------------------------------------------------------------------- reading
def test_read_raw_table_marks_cells_and_keeps_identifiers_apart(tmp_path: Path) -> None:
    table = messy(tmp_path)
    np.testing.assert_array_equal(table.x, [[1, 10], [np.nan, 20], [2, np.nan], [9, np.nan], [2, 30]])
    assert table.feature_names == ("a", "b")
    assert table.labels == ("0", "1", "0", "1", "0")
    assert dict(table.ids) == {"pid": PIDS}
    assert table.rows.tolist() == [2, 3, 4, 5, 6] and table.zero_based is False
    assert table.not_numbers.tolist() == [0, 1]
    assert table.non_finite.tolist() == [0, 1]
    assert not np.isin(np.asarray(PIDS, dtype=float), table.x).any()


def test_repr_shows_no_value(tmp_path: Path) -> None:
    table = messy(tmp_path)
    result = clean(table, CleaningSpec(missing="mean", id_columns=("pid",), ids="hash"), hmac_key=KEY)
    for text in (repr(table), repr(result), repr(local_stats(table.x))):
        assert "900001" not in text and "30." not in text and "9." not in text


def test_read_normalises_labels(tmp_path: Path) -> None:
    table = read_raw_table(write(tmp_path, "a,y\n1, 1.0\n2,0.0\n3,cat\n"), "y")
    assert table.labels == ("1", "0", "cat")


def test_missing_label_is_an_error_naming_file_and_row(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,0\n2,\n3,1\n")
    with pytest.raises(DataValidationError, match=r"row 3, column 'y': the label is missing") as info:
        read_raw_table(path, "y")
    assert str(path) in str(info.value)


def test_unknown_identifier_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, MESSY)
    with pytest.raises(DataValidationError, match=r"no identifier column 'patient'; the columns are: pid, a, b, y"):
        read_raw_table(path, "y", ["patient"])


def test_label_cannot_be_an_identifier(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="label column"):
        read_raw_table(write(tmp_path, MESSY), "y", ["y"])


def test_no_feature_left_besides_identifiers(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="no feature columns besides the label and identifier"):
        read_raw_table(write(tmp_path, "pid,y\n1,0\n2,1\n"), "y", ["pid"])


def test_unusable_file_raises_like_check_shard(tmp_path: Path) -> None:
    path = write(tmp_path, "a,y\n1,0\n2,1,7\n")
    with pytest.raises(DataValidationError, match=r"row 3 has 3 fields.*expected 2"):
        read_raw_table(path, "y")


def test_parquet_rows_are_zero_based(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"pid": ["p1", "p2", None], "a": [1.0, None, 3.0], "y": [0, 1, 0]}), path)
    table = read_raw_table(path, "y", ["pid"])
    np.testing.assert_array_equal(table.x, [[1.0], [np.nan], [3.0]])
    assert dict(table.ids) == {"pid": ("p1", "p2", "")}
    assert table.rows.tolist() == [0, 1, 2] and table.zero_based
    with pytest.raises(DataValidationError, match=r"row 1 \(0-based\), column 'a'"):
        clean(table, CleaningSpec(id_columns=("pid",)))


def test_npz_identifier_column_and_missing_cell(tmp_path: Path) -> None:
    path = tmp_path / "shard.npz"
    np.savez(path, x=np.asarray([[7, 1.5, 2.0], [8, np.nan, 4.0]]), y=np.asarray([0, 1]))
    table = read_raw_table(path, "", ["feature_0"])
    assert table.feature_names == ("feature_1", "feature_2")
    assert dict(table.ids) == {"feature_0": ("7.0", "8.0")}
    with pytest.raises(DataValidationError, match=r"row 1 \(0-based\), column 'feature_1'"):
        clean(table, CleaningSpec(id_columns=("feature_0",)))


# -------------------------------------------------------------------------------------------- the spec
def test_validate_lists_every_bad_value() -> None:
    spec = CleaningSpec(missing="guess", outliers="trim", outlier_k=-1.0, scaling="log")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        spec.validate()
    assert info.value.problems == [
        "missing 'guess': expected error | drop | mean | median | mode",
        "outliers 'trim': expected keep | clip | drop",
        "scaling 'log': expected none | zscore | minmax",
        "outlier-k -1.0: expected a positive number",
    ]


def test_is_noop() -> None:
    assert CleaningSpec().is_noop
    assert not CleaningSpec(duplicates="drop").is_noop
    assert not CleaningSpec(id_columns=("pid",)).is_noop


# ---------------------------------------------------------------------------------------------- missing
def test_missing_error_names_file_row_and_column(tmp_path: Path) -> None:
    table = messy(tmp_path)
    with pytest.raises(DataValidationError) as info:
        clean(table, CleaningSpec(id_columns=("pid",)))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'shard.csv'}: row 3, column 'a': the value is missing")
    assert "3 such cell(s)" in message and "set missing = drop | mean | median | mode" in message
    assert "900002" not in message


@pytest.mark.parametrize(("mode", "expected"), [
    ("mean", [[1, 10], [3.5, 20], [2, 20], [9, 20], [2, 30]]),
    ("median", [[1, 10], [2, 20], [2, 20], [9, 20], [2, 30]]),
    ("mode", [[1, 10], [2, 20], [2, 10], [9, 10], [2, 30]]),  # b: a three-way tie, the smallest wins
])
def test_imputation(tmp_path: Path, mode: str, expected: list[list[float]]) -> None:
    result = clean(messy(tmp_path), CleaningSpec(missing=mode, id_columns=("pid",)))  # type: ignore[arg-type]
    np.testing.assert_array_equal(result.x, np.asarray(expected, dtype=np.float32))
    assert result.x.dtype == np.float32
    assert result.rows.tolist() == [2, 3, 4, 5, 6]
    assert result.summary.cells_missing == 3 and result.summary.cells_imputed == 3
    assert result.summary.rows_out == 5


def test_mean_with_given_values(tmp_path: Path) -> None:
    result = clean(messy(tmp_path), CleaningSpec(missing="mean", id_columns=("pid",)),
                   impute_values=np.asarray([0.0, -1.0]))
    np.testing.assert_array_equal(result.x, [[1, 10], [0, 20], [2, -1], [9, -1], [2, 30]])


def test_given_values_must_fit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected 2 finite numbers"):
        clean(messy(tmp_path), CleaningSpec(missing="mean", id_columns=("pid",)), impute_values=np.zeros(3))
    with pytest.raises(ConfigError, match="missing = mean only"):
        clean(messy(tmp_path), CleaningSpec(missing="median", id_columns=("pid",)), impute_values=np.zeros(2))


def test_drop_rows_with_missing(tmp_path: Path) -> None:
    result = clean(messy(tmp_path), CleaningSpec(missing="drop", id_columns=("pid",)))
    np.testing.assert_array_equal(result.x, [[1, 10], [2, 30]])
    assert result.rows.tolist() == [2, 6] and result.labels == ("0", "0")
    assert result.summary.rows_dropped_missing == 3 and result.summary.cells_imputed == 0


def test_drop_every_row_is_an_error() -> None:
    with pytest.raises(DataValidationError, match="no row left after dropping rows with a missing value"):
        clean(table_of([[1, np.nan], [np.nan, 2]], ["0", "1"]), CleaningSpec(missing="drop"))


@pytest.mark.parametrize("mode", ["mean", "median", "mode"])
def test_entirely_missing_column_is_named(mode: str) -> None:
    table = table_of([[1, np.nan], [2, np.nan]], ["0", "1"])
    with pytest.raises(DataValidationError, match=r"column\(s\) 'f1': every value is missing"):
        clean(table, CleaningSpec(missing=mode))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- duplicates
DUPLICATES = [[1, 2], [1, 2], [1, 2], [-0.0, 5], [0, 5], [1, 2]]
DUPLICATE_LABELS = ["0", "0", "1", "0", "0", "0"]


def test_duplicates_dropped_keeping_the_first() -> None:
    result = clean(table_of(DUPLICATES, DUPLICATE_LABELS), CleaningSpec(duplicates="drop"))
    np.testing.assert_array_equal(result.x, [[1, 2], [1, 2], [0, 5]])
    assert result.labels == ("0", "1", "0")  # the same features with another label is no duplicate
    assert result.rows.tolist() == [2, 4, 5]
    assert result.summary.duplicates_dropped == 3 and result.summary.rows_out == 3


def test_duplicates_kept_by_default() -> None:
    result = clean(table_of(DUPLICATES, DUPLICATE_LABELS), CleaningSpec())
    assert result.x.shape == (6, 2) and result.summary.duplicates_dropped == 0


def test_duplicates_ignore_identifiers_and_follow_imputation(tmp_path: Path) -> None:
    path = write(tmp_path, "pid,a,b,y\np1,2,7,0\np2,,7,0\np3,2,1,1\n")
    spec = CleaningSpec(missing="mean", duplicates="drop", id_columns=("pid",), ids="hash")
    result = clean(read_raw_table(path, "y", ["pid"]), spec, hmac_key=KEY)
    np.testing.assert_array_equal(result.x, [[2, 7], [2, 1]])
    assert result.summary.duplicates_dropped == 1
    assert result.hashed_ids["pid"] == tuple(hmac.new(KEY, p, hashlib.sha256).hexdigest() for p in (b"p1", b"p3"))


# --------------------------------------------------------------------------------------------- outliers
OUTLYING = [[-50, 10], [1, 10], [2, 10], [3, 10], [4, 10], [100, 10]]


def test_outliers_clipped_to_the_iqr_fences() -> None:
    # a: q1 = 1.25, q3 = 3.75, k = 2 -> fences [-3.75, 8.75]; b has no spread and no outlier.
    result = clean(table_of(OUTLYING, ["0", "1"] * 3), CleaningSpec(outliers="clip", outlier_k=2.0))
    np.testing.assert_array_equal(result.x[:, 0], [-3.75, 1, 2, 3, 4, 8.75])
    np.testing.assert_array_equal(result.x[:, 1], [10] * 6)
    assert result.summary.outliers_clipped == 2 and result.summary.rows_out == 6


def test_outlier_rows_dropped() -> None:
    result = clean(table_of(OUTLYING, ["0", "1"] * 3), CleaningSpec(outliers="drop", outlier_k=2.0))
    np.testing.assert_array_equal(result.x, [[1, 10], [2, 10], [3, 10], [4, 10]])
    assert result.rows.tolist() == [3, 4, 5, 6]
    assert result.summary.rows_dropped_outliers == 2 and result.summary.outliers_clipped == 0


def test_wide_fences_keep_everything() -> None:
    result = clean(table_of(OUTLYING, ["0", "1"] * 3), CleaningSpec(outliers="clip", outlier_k=50.0))
    np.testing.assert_array_equal(result.x, OUTLYING)
    assert result.summary.outliers_clipped == 0


# ---------------------------------------------------------------------------------------------- scaling
def test_zscore_local_with_a_constant_column() -> None:
    result = clean(table_of([[1, 5], [3, 5]], ["0", "1"]), CleaningSpec(scaling="zscore"))
    np.testing.assert_array_equal(result.x, [[-1, 0], [1, 0]])
    assert result.summary.scaling == "zscore"


def test_zscore_of_a_constant_column_with_rounding_noise() -> None:
    result = clean(table_of([[0.1, 1], [0.1, 2], [0.1, 3]], ["0", "1", "0"]), CleaningSpec(scaling="zscore"))
    np.testing.assert_array_equal(result.x[:, 0], [0, 0, 0])


def test_minmax_local_with_a_constant_column() -> None:
    result = clean(table_of([[1, 5], [3, 5], [2, 5]], ["0", "1", "0"]), CleaningSpec(scaling="minmax"))
    np.testing.assert_array_equal(result.x, [[0, 0], [1, 0], [0.5, 0]])


GIVEN = FeatureStats(10.0, np.asarray([0.0, 5.0]), np.asarray([2.0, 0.0]), np.asarray([0.0, 0.0]),
                     np.asarray([4.0, 10.0]))


def test_scaling_with_given_statistics() -> None:
    table = table_of([[1, 5], [3, 5]], ["0", "1"])
    np.testing.assert_array_equal(clean(table, CleaningSpec(scaling="zscore"), stats=GIVEN).x,
                                  [[0.5, 0], [1.5, 0]])
    np.testing.assert_array_equal(clean(table, CleaningSpec(scaling="minmax"), stats=GIVEN).x,
                                  [[0.25, 0.5], [0.75, 0.5]])


def test_given_statistics_must_fit() -> None:
    bad = FeatureStats(1.0, np.zeros(3), np.ones(3), np.zeros(3), np.ones(3))
    with pytest.raises(ConfigError, match="expected 2 finite values per statistic"):
        clean(table_of([[1, 5], [3, 5]], ["0", "1"]), CleaningSpec(scaling="zscore"), stats=bad)


def test_values_beyond_float32_are_refused() -> None:
    with pytest.raises(DataValidationError, match="column 'f1': a value beyond the float32 range"):
        clean(table_of([[1, 1e39], [2, 0]], ["0", "1"]), CleaningSpec())


@pytest.mark.parametrize(("missing", "duplicates", "outliers", "scaling"), list(itertools.product(
    ("drop", "mean", "median", "mode"), DUPLICATES_MODES, OUTLIERS_MODES, SCALING_MODES)))
def test_no_nan_or_infinity_out(tmp_path: Path, missing: str, duplicates: str, outliers: str, scaling: str) -> None:
    spec = CleaningSpec(missing, duplicates, outliers, 1.0, scaling, ("pid",))  # type: ignore[arg-type]
    result = clean(messy(tmp_path), spec)
    assert result.x.dtype == np.float32 and result.x.shape[1] == 2
    assert np.isfinite(result.x).all()
    assert len(result.labels) == len(result.rows) == result.x.shape[0] == result.summary.rows_out


# --------------------------------------------------------------------------------------------- statistics
def test_local_stats_ignore_missing_and_infinite_cells() -> None:
    x = np.asarray([[1, np.nan, np.nan], [3, np.inf, np.nan], [5, 4, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-missing column gives NaN, not a RuntimeWarning
        stats = local_stats(x)
    assert stats.count == 3.0
    np.testing.assert_array_equal(stats.mean, [3, 4, np.nan])
    np.testing.assert_allclose(stats.std[:2], [np.sqrt(8 / 3), 0])
    np.testing.assert_array_equal(stats.minimum, [1, 4, np.nan])
    np.testing.assert_array_equal(stats.maximum, [5, 4, np.nan])
    assert stats.present is not None and stats.present.tolist() == [3, 1, 0]


# -------------------------------------------------------------------------------------------- identifiers
def test_dropped_identifiers_never_reach_features_or_output(tmp_path: Path) -> None:
    result = clean(messy(tmp_path), CleaningSpec(missing="mean", id_columns=("pid",)))
    assert dict(result.hashed_ids) == {}
    assert not np.isin(np.asarray(PIDS, dtype=np.float32), result.x).any()
    assert result.summary.id_columns_dropped == 1 and result.summary.id_columns_hashed == 0
    out = tmp_path / "clean.csv"
    write_clean_table(result, ("a", "b"), "y", out)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "a,b,y"
    assert not any(p in text for p in PIDS)
    assert text.splitlines()[1:] == ["1.0,10.0,0", "3.5,20.0,1", "2.0,20.0,0", "9.0,20.0,1", "2.0,30.0,0"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the owner's rows, as the temporary file was before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_hashed_identifiers_are_hmac_sha256(tmp_path: Path) -> None:
    spec = CleaningSpec(missing="drop", id_columns=("pid",), ids="hash")
    result = clean(messy(tmp_path), spec, hmac_key=KEY)
    expected = tuple(hmac.new(KEY, p.encode(), hashlib.sha256).hexdigest() for p in ("900001", "900005"))
    assert result.hashed_ids == {"pid": expected}
    assert result.summary.id_columns_hashed == 1 and result.summary.id_columns_dropped == 0
    out = tmp_path / "clean.csv"
    write_clean_table(result, ("a", "b"), "y", out)
    assert out.read_text(encoding="utf-8").splitlines() == [
        "pid,a,b,y", f"{expected[0]},1.0,10.0,0", f"{expected[1]},2.0,30.0,0",
    ]


def test_hash_needs_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ids 'hash': expected a secret key"):
        clean(messy(tmp_path), CleaningSpec(missing="mean", id_columns=("pid",), ids="hash"))


def test_identifier_read_as_a_feature_is_refused(tmp_path: Path) -> None:
    table = read_raw_table(write(tmp_path, MESSY), "y")
    with pytest.raises(ConfigError, match="id-column 'pid' was read as a feature"):
        clean(table, CleaningSpec(missing="mean", id_columns=("pid",)))


def test_write_refuses_the_source_file(tmp_path: Path) -> None:
    source = write(tmp_path, MESSY)
    result = clean(read_raw_table(source, "y", ["pid"]), CleaningSpec(missing="mean", id_columns=("pid",)))
    with pytest.raises(ConfigError, match="this is the input file"):
        write_clean_table(result, ("a", "b"), "y", source)
    assert source.read_text(encoding="utf-8") == MESSY


# ---------------------------------------------------------------------------------------------- key file
def test_key_file_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    key = load_or_create_hmac_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key
    assert load_or_create_hmac_key(path) == key
    assert load_or_create_hmac_key(tmp_path / "other.key") != key


def test_key_file_in_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    with pytest.raises(DataValidationError, match="cannot create the key file .*expected a writable folder"):
        load_or_create_hmac_key(folder / "owner.key")


def test_key_file_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "owner.key"
    path.write_bytes(b"short")
    with pytest.raises(DataValidationError, match="holds 5 bytes; expected 32") as info:
        load_or_create_hmac_key(path)
    assert str(path) in str(info.value)
