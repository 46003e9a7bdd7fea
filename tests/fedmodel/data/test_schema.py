"""Shards checked against the run's declared schema, and the Parquet reader."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedmodel.data.files import read_table
from fedmodel.data.schema import Schema, normalise_label
from fedmodel.errors import DataValidationError

SCHEMA = Schema(num_features=2, labels=("0", "1", "2"))


def csv_file(tmp_path: Path, text: str, name: str = "shard.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_labels_are_encoded_against_the_declared_list_not_the_shard_own_values(tmp_path: Path) -> None:
    """A shard holding only classes 1 and 2 must still encode them as 1 and 2, not 0 and 1."""
    data = read_table(csv_file(tmp_path, "a,b,y\n1,2,2\n3,4,1\n5,6,2.0\n"), "y", SCHEMA)
    assert data.y.tolist() == [2, 1, 2]
    assert data.classes == SCHEMA.labels


def test_wrong_column_count_names_file_and_expectation(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b,c,y\n1,2,3,0\n")
    with pytest.raises(DataValidationError) as info:
        read_table(path, "y", SCHEMA)
    assert str(path) in str(info.value)
    assert "3 feature columns (a, b, c); the run expects 2" in str(info.value)


def test_label_outside_the_schema_names_the_row(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"row 3, column 'y': label '7' is not one of the run's labels 0, 1, 2"):
        read_table(csv_file(tmp_path, "a,b,y\n1,2,0\n3,4,7\n"), "y", SCHEMA)


@pytest.mark.parametrize(("raw", "expected"), [(" 1 ", "1"), ("1.0", "1"), ("1.5", "1.5"), ("benign", "benign")])
def test_normalise_label(raw: str, expected: str) -> None:
    assert normalise_label(raw) == expected


def test_schema_round_trips_through_a_config_record() -> None:
    schema = Schema(30, ("malignant", "benign"))
    assert Schema.from_config(dict(schema.to_config())) == schema
    assert Schema.from_config({}) is None


def test_parquet_shard_reads_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6], "y": [0, 2, 2]}), path)
    data = read_table(path, "y", SCHEMA)
    assert data.x.shape == (3, 2) and data.x.dtype == np.float32
    assert data.y.tolist() == [0, 2, 2]


@pytest.mark.parametrize(("table", "message"), [
    (pa.table({"a": [1.0, None], "b": [1.0, 2.0], "y": [0, 1]}), "row 1 (0-based), column 'a': missing"),
    (pa.table({"a": ["x", "z"], "b": [1.0, 2.0], "y": [0, 1]}), "column 'a' has type string; expected numbers"),
    (pa.table({"a": [1.0, 2.0], "b": [1.0, 2.0], "z": [0, 1]}), "no label column 'y'"),
    (pa.table({"a": [1.0, 2.0], "b": [1.0, 2.0], "y": [0, None]}), "column 'y': the label is missing"),
])
def test_parquet_errors(tmp_path: Path, table: pa.Table, message: str) -> None:
    path = tmp_path / "shard.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataValidationError, match=re.escape(message)):
        read_table(path, "y", SCHEMA)


def test_a_file_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "shard.parquet"
    path.write_bytes(b"a,b,y\n1,2,0\n")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        read_table(path, "y")


def test_a_label_outside_the_schema_is_public_without_its_value(tmp_path: Path) -> None:
    """A coordinator's schema leaving one label out must not make the node quote that label to it."""
    with pytest.raises(DataValidationError) as info:
        Schema(num_features=1, labels=("benign",)).encode(["benign", "malignant"], "shard.csv", [2, 3])
    assert "'malignant'" in str(info.value)  # the owner's own log keeps the value
    assert info.value.public_message == "shard.csv: row 3: the label is not one of the run's labels"
