"""Tests of :func:`fedmodel.data.files.read_table`: CSV and NPZ shards and their error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmodel.data.files import read_table
from fedmodel.errors import DataValidationError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_error(path: Path, label: str) -> str:
    with pytest.raises(DataValidationError) as info:
        read_table(path, label)
    message = str(info.value)
    assert str(path) in message
    return message


# ---------------------------------------------------------------------------------------------- CSV
def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "shard.csv", "f1,kind,f2\n1.5,pear,2\n-3,apple,4e1\n0,pear,0.25\n")
    data = read_table(path, "kind")
    assert data.name == "shard.csv"
    assert data.classes == ("apple", "pear")
    assert data.feature_names == ("f1", "f2")
    assert data.x.dtype == np.float32
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x, np.array([[1.5, 2.0], [-3.0, 40.0], [0.0, 0.25]], dtype=np.float32))
    np.testing.assert_array_equal(data.y, [1, 0, 1])


def test_csv_with_numeric_labels_sorts_numerically(tmp_path: Path) -> None:
    path = write(tmp_path / "shard.csv", "a,b,y\n1,2,10\n3,4,2\n5,6,1\n7,8,2\n")
    data = read_table(path, "y")
    assert data.classes == ("1", "2", "10")
    np.testing.assert_array_equal(data.y, [2, 1, 0, 1])
    assert data.feature_names == ("a", "b")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("a,b,y\n1,2,0\n3,oops,1\n", ["row 3", "column 'b'", "'oops' is not a number"]),
        ("a,b,y\n1,2,0\nnan,4,1\n", ["row 3", "column 'a'", "'nan' is not a finite number"]),
        ("a,b,y\n1,2,0\n3,4,1\n5,inf,0\n", ["row 4", "column 'b'", "'inf' is not a finite number"]),
        ("a,b,y\n1,2,0\n3,4\n", ["row 3", "has 2 fields", "expected 3"]),
        ("", ["empty"]),
        ("a,b,y\n", ["only a header row"]),
        ("a,b,label\n1,2,0\n3,4,1\n", ["no label column 'y'", "a, b, label"]),
        ("a,b,y\n1,2,7\n3,4,7\n", ["single value '7'", "at least two classes"]),
        ("a,b,y\n1,2,0\n3,4, \n", ["row 3", "column 'y'", "label is empty"]),
    ],
    ids=["non-numeric", "nan", "inf", "ragged", "empty", "header-only", "missing-label", "single-class",
         "empty-label"],
)
def test_csv_errors_name_file_row_and_column(tmp_path: Path, text: str, needles: list[str]) -> None:
    message = read_error(write(tmp_path / "shard.csv", text), "y")
    for needle in needles:
        assert needle in message


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,y\ncaf\u00e9,1\n".encode("latin-1"))
    message = read_error(path, "y")
    assert "not UTF-8" in message


def test_csv_without_label_name(tmp_path: Path) -> None:
    message = read_error(write(tmp_path / "shard.csv", "a,y\n1,0\n2,1\n"), "")
    assert "--label" in message


@pytest.mark.parametrize("name", ["shard.txt", "shard"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    message = read_error(write(tmp_path / name, "a,y\n1,0\n2,1\n"), "y")
    assert "unsupported file type" in message
    assert ".csv, .parquet or .npz" in message


def test_missing_file(tmp_path: Path) -> None:
    message = read_error(tmp_path / "absent.csv", "y")
    assert "file not found" in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert "not a file" in read_error(folder, "y")


# ---------------------------------------------------------------------------------------------- NPZ
def good_arrays() -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    y = np.array([3, 1, 3, 1, 2, 2])
    return x, y


@pytest.mark.parametrize("feature_key", ["x", "X", "features"])
def test_npz_good_file(tmp_path: Path, feature_key: str) -> None:
    x, y = good_arrays()
    path = tmp_path / "shard.npz"
    np.savez(path, **{feature_key: x, "y": y})
    data = read_table(path, "")  # NPZ label key defaults to "y"
    assert data.name == "shard.npz"
    assert data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x, x.astype(np.float32))
    assert data.classes == ("1", "2", "3")
    np.testing.assert_array_equal(data.y, [2, 0, 2, 0, 1, 1])
    assert data.feature_names == ("feature_0", "feature_1")


def test_npz_named_label_key(tmp_path: Path) -> None:
    x, y = good_arrays()
    path = tmp_path / "shard.npz"
    np.savez(path, x=x, target=y)
    data = read_table(path, "target")
    assert data.num_classes == 3


def test_npz_missing_feature_array(tmp_path: Path) -> None:
    x, y = good_arrays()
    path = tmp_path / "shard.npz"
    np.savez(path, data=x, y=y)
    message = read_error(path, "y")
    assert "no feature array" in message
    assert "data" in message


def test_npz_missing_label_key(tmp_path: Path) -> None:
    x, y = good_arrays()
    path = tmp_path / "shard.npz"
    np.savez(path, x=x, labels=y)
    message = read_error(path, "y")
    assert "no label array 'y'" in message
    assert "labels" in message


def test_npz_three_dimensional_features(tmp_path: Path) -> None:
    path = tmp_path / "shard.npz"
    np.savez(path, x=np.zeros((6, 2, 2)), y=np.array([0, 1, 0, 1, 0, 1]))
    message = read_error(path, "y")
    assert "(6, 2, 2)" in message
    assert "2-D" in message


def test_npz_label_length_mismatch(tmp_path: Path) -> None:
    x, _ = good_arrays()
    path = tmp_path / "shard.npz"
    np.savez(path, x=x, y=np.array([0, 1, 0, 1, 0]))
    message = read_error(path, "y")
    assert "(5,)" in message
    assert "expected (6,)" in message


def test_npz_truncated(tmp_path: Path) -> None:
    x, y = good_arrays()
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=y)
    path = tmp_path / "truncated.npz"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "not a readable .npz file" in read_error(path, "y")


def test_npz_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not a zip archive at all\n" * 4)
    message = read_error(path, "y")
    assert "not a readable .npz file" in message


def test_npz_nan_names_row_and_column(tmp_path: Path) -> None:
    x, y = good_arrays()
    x[4, 1] = np.nan
    path = tmp_path / "shard.npz"
    np.savez(path, x=x, y=y)
    message = read_error(path, "y")
    assert "row 4, column 1 (0-based) of 'x'" in message  # array indices, counted from 0
    assert "not a finite number" in message


def test_npz_single_class(tmp_path: Path) -> None:
    x, _ = good_arrays()
    path = tmp_path / "shard.npz"
    np.savez(path, x=x, y=np.zeros(6, dtype=np.int64))
    assert "at least two classes" in read_error(path, "y")


@pytest.mark.parametrize(("text", "value", "public"), [
    ("a,b,y\n1,2,0\n3,Smith 1961-04-02,1\n", "Smith", "row 3, column 'b': the value is not a number; expected a number"),
    ("a,b,y\n1,2,0\n-1e999,4,1\n", "1e999", "row 3, column 'a': the value is not a finite number"),
    ("a,b,y\n1,2,HIV+\n3,4,HIV+\n", "HIV+", "the label has a single value; expected at least two classes"),
])
def test_errors_quoting_a_value_have_a_public_message_without_it(tmp_path: Path, text: str, value: str,
                                                                 public: str) -> None:
    path = write(tmp_path / "shard.csv", text)
    with pytest.raises(DataValidationError) as info:
        read_table(path, "y")
    assert value in str(info.value)  # the owner's terminal (fedmodel data check) keeps the value
    assert info.value.public_message == f"{path}: {public}" and value not in info.value.public_message


def test_npz_non_finite_value_is_public_without_it(tmp_path: Path) -> None:
    path = tmp_path / "shard.npz"
    np.savez(path, x=np.array([[1.0, 2.0], [-123.456e300 * 1e10, 4.0]]), y=np.array([0, 1]))
    with pytest.raises(DataValidationError) as info:
        read_table(path, "y")
    assert "inf" in str(info.value) and "inf" not in info.value.public_message
    assert "row 1, column 0 (0-based)" in info.value.public_message
