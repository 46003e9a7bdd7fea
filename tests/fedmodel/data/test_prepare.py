"""An owner's rows to its training shard: the gate, counts that carry no value, identifiers kept out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedmodel.config import RunConfig
from fedmodel.data import Dataset
from fedmodel.data.cleaning import FeatureStats
from fedmodel.data.prepare import (
    as_raw,
    cleaning_spec,
    prepare_shard,
    quality_counts,
    read_owner_file,
    stats_from_config,
    stats_to_config,
)
from fedmodel.data.schema import Schema
from fedmodel.errors import DataValidationError

SCHEMA = Schema(2, ("0", "1"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def messy_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "shard.csv", "\n".join([
        "patient_id,a,b,label",
        "900001,1.0,10,0",
        "900002,,12,1",
        "900003,3.0,14,0",
        "900003,3.0,14,0",
        "900005,5.0,1000,1",
        "900006,6.0,16,1",
    ]) + "\n")


def test_identifier_column_never_reaches_the_features(tmp_path: Path) -> None:
    config = RunConfig(dataset="file", data_path=str(tmp_path / "shard.csv"), label="label", missing="median",
                       duplicates="drop", id_columns=("patient_id",))
    spec = cleaning_spec(config)
    raw = read_owner_file(messy_csv(tmp_path), "label", SCHEMA, spec)
    prepared = prepare_shard(raw, spec, SCHEMA, name="shard")
    assert prepared.data.feature_names == ("a", "b")
    assert prepared.data.num_features == 2
    assert not np.isin(np.arange(900001, 900007), prepared.data.x).any()
    assert prepared.summary["id-columns"] == 1 and prepared.summary["clean-id-columns-dropped"] == 1


def test_counts_describe_the_raw_rows_and_what_cleaning_did(tmp_path: Path) -> None:
    config = RunConfig(missing="median", duplicates="drop", outliers="clip", outlier_k=1.5, id_columns=("patient_id",))
    spec = cleaning_spec(config)
    raw = read_owner_file(messy_csv(tmp_path), "label", SCHEMA, spec)
    summary = prepare_shard(raw, spec, SCHEMA, name="shard").summary
    assert summary["rows"] == 6 and summary["missing-cells"] == 1 and summary["duplicate-rows"] == 1
    assert summary["clean-rows-out"] == 5 and summary["clean-duplicates-dropped"] == 1
    assert summary["clean-cells-imputed"] == 1 and summary["clean-outliers-clipped"] >= 1
    assert all(isinstance(v, int) for v in summary.values())


def test_without_a_gap_policy_the_gate_is_the_data_checks_verdict(tmp_path: Path) -> None:
    spec = cleaning_spec(RunConfig())
    path = write(tmp_path / "gaps.csv", "a,b,label\n1,2,0\n,3,1\n4,5,7\n")
    with pytest.raises(DataValidationError) as info:
        read_owner_file(path, "label", SCHEMA, spec)
    text = str(info.value)
    assert text.startswith(f"{path}: ")
    assert "column 'a': 1 missing value(s) (first at row 3)" in text
    assert "label outside the run schema's labels 0, 1 (first at row 4)" in text  # every reason, one message


def test_labels_are_encoded_against_the_runs_schema_not_the_shards_own(tmp_path: Path) -> None:
    path = write(tmp_path / "only1.csv", "a,b,label\n1,2,1\n3,4,1\n")
    spec = cleaning_spec(RunConfig())
    prepared = prepare_shard(read_owner_file(path, "label", SCHEMA, spec), spec, SCHEMA, name="x")
    assert prepared.data.y.tolist() == [1, 1] and prepared.data.classes == ("0", "1")


def test_a_partition_with_gaps_is_cleaned_like_a_file() -> None:
    x = np.array([[1.0, np.nan], [3.0, 4.0], [5.0, 8.0]], dtype=np.float32)
    data = Dataset("p", x, np.array([0, 1, 1]), ("0", "1"), ("a", "b"))
    spec = cleaning_spec(RunConfig(missing="mean", scaling="zscore"))
    stats = FeatureStats(count=3.0, mean=np.array([3.0, 6.0]), std=np.array([2.0, 2.0]),
                         minimum=np.zeros(2), maximum=np.ones(2))
    prepared = prepare_shard(as_raw(data, "owner 0", SCHEMA), spec, SCHEMA, name="p", stats=stats,
                             impute=np.array([3.0, 6.0]))
    np.testing.assert_allclose(prepared.data.x, [[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    assert quality_counts(as_raw(data, "owner 0", SCHEMA))["missing-cells"] == 1


def test_a_bundled_data_sets_classes_are_named_by_the_schemas_codes() -> None:
    data = Dataset("b", np.zeros((3, 2), np.float32), np.array([1, 0, 1]), ("malignant", "benign"), ("a", "b"))
    raw = as_raw(data, "the coordinator's test split", SCHEMA)
    assert raw.labels == ("1", "0", "1")
    prepared = prepare_shard(raw, cleaning_spec(RunConfig()), SCHEMA, name="b")
    assert prepared.data.y.tolist() == [1, 0, 1]
    with pytest.raises(DataValidationError, match="2 classes; the run's schema declares 3"):
        as_raw(data, "x", Schema(2, ("0", "1", "2")))


def test_scaling_statistics_round_trip_through_a_config_record() -> None:
    stats = FeatureStats(count=10.0, mean=np.array([1.5, -2.0]), std=np.array([0.5, 3.0]),
                         minimum=np.array([0.0, -9.0]), maximum=np.array([4.0, 9.0]))
    again, impute = stats_from_config(stats_to_config(stats, np.array([1.5, -2.0])))
    assert again is not None and impute is not None
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.maximum, stats.maximum)
    np.testing.assert_array_equal(impute, [1.5, -2.0])
    assert stats_from_config({}) == (None, None)


def _outliers_and_constants_column_by_column(x: np.ndarray, iqr_k: float = 1.5) -> tuple[int, int]:
    """The per-column definition the vectorised counts must equal."""
    present, outliers, constant = np.isfinite(x), 0, 0
    for j in range(x.shape[1]):
        col = x[present[:, j], j]
        if col.size >= 2:
            q1, q3 = np.percentile(col, [25, 75])
            outliers += int(np.count_nonzero((col < q1 - iqr_k * (q3 - q1)) | (col > q3 + iqr_k * (q3 - q1))))
        if col.size and np.all(col == col[0]):
            constant += 1
    return outliers, constant


@pytest.mark.parametrize("seed", range(20))
def test_quality_counts_equal_the_column_by_column_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(25):
        n, d = int(rng.integers(0, 12)), int(rng.integers(1, 6))
        x = rng.standard_t(2, (n, d)).round(int(rng.integers(0, 2)))
        x[rng.random((n, d)) < 0.3] = np.nan
        if d > 1 and n:
            x[:, 0] = 3.0  # a constant column
        if d > 2 and n:
            x[rng.random(n) < 0.5, 2] = np.inf  # not finite: not a value
        data = Dataset("q", np.zeros((n, d), np.float32), np.zeros(n, np.int64), ("0", "1"),
                       tuple(f"f{j}" for j in range(d)))
        raw = dataclasses.replace(as_raw(data, "owner 0", Schema(d, ("0", "1"))), x=x)
        counts = quality_counts(raw)
        assert (counts["outlier-cells-iqr"], counts["constant-columns"]) == _outliers_and_constants_column_by_column(x)
