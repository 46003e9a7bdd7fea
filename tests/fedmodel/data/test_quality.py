"""Counts of :func:`check_shard` on a small handmade table, thresholds, no raw values, and schema files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedmodel.cli.data import data_app
from fedmodel.data.quality import QualityReport, check_shard
from fedmodel.data.schema import Schema
from fedmodel.data.schema_file import SchemaFile, load_schema_file
from fedmodel.errors import ConfigError

# Row 5 repeats row 4 except for its id; column c is constant; a = 100 (row 7) is the one far value.
TABLE = (
    "pid,a,b,c,y\n"
    "SECRET-123,1,10,5,0\n"
    "p2,2,11,5,0\n"
    "p3,3,12,5,1\n"
    "p4,3,12,5,1\n"
    "p5,4,13,5,0\n"
    "p6,100,14,5,1\n"
)
SCHEMA = """
label = "y"
labels = [0, 1]
id_columns = ["pid"]

[columns]
pid = "id"
a = "float"
b = "int"
c = "float"
y = "category"

[ranges]
b = [0, 20]
"""


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "shard.csv"
    path.write_text(TABLE, encoding="utf-8")
    return path


@pytest.fixture
def schema(tmp_path: Path) -> SchemaFile:
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA, encoding="utf-8")
    return load_schema_file(path)


def column(report: QualityReport, name: str) -> dict[str, object]:
    return next(vars(c) for c in report.columns if c.name == name)


def test_counts_on_the_handmade_table(table: Path, schema: SchemaFile) -> None:
    report = check_shard(table, label="y", schema=schema)
    assert report.num_rows == 6
    assert len(report.columns) == 5
    assert report.duplicate_rows == 1  # rows 4 and 5 differ only in the identifier
    assert report.class_counts == (("0", 3), ("1", 3))
    assert report.id_columns == ("pid",)
    assert column(report, "pid")["role"] == "id"
    assert column(report, "c")["constant"] is True
    assert column(report, "a")["constant"] is False
    assert column(report, "a")["outliers_iqr"] == 1
    assert column(report, "a")["outliers_z"] == 0  # |z| of 100 is about 2.2
    assert column(report, "b")["inferred_type"] == "int"
    assert report.may_train, report.reasons
    assert any("duplicate row" in w and "row 5" in w for w in report.warnings)
    assert any("'c' has one value" in w for w in report.warnings)


def test_identifier_makes_rows_distinct_without_a_schema(table: Path) -> None:
    report = check_shard(table, label="y")
    assert report.duplicate_rows == 0
    assert column(report, "pid")["inferred_type"] == "text"
    assert not report.may_train
    assert any("column 'pid': holds text" in r for r in report.reasons)


@pytest.mark.parametrize(("iqr_k", "z", "iqr_count", "z_count"), [
    (1.5, 3.0, 1, 0),
    (100.0, 3.0, 0, 0),
    (1.5, 2.0, 1, 1),
    (0.1, 0.5, 4, 1),  # quartiles 2.25 and 3.75: only the two 3s lie within 0.15 of them
])
def test_thresholds_change_the_outlier_counts(table: Path, schema: SchemaFile, iqr_k: float, z: float,
                                              iqr_count: int, z_count: int) -> None:
    report = check_shard(table, label="y", schema=schema, iqr_k=iqr_k, z=z)
    assert (column(report, "a")["outliers_iqr"], column(report, "a")["outliers_z"]) == (iqr_count, z_count)


@pytest.mark.parametrize("bad", [{"iqr_k": 0.0}, {"z": -1.0}, {"z": float("nan")}])
def test_thresholds_must_be_positive(table: Path, bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        check_shard(table, label="y", **bad)  # type: ignore[arg-type]


def test_range_violation_counted(tmp_path: Path, schema: SchemaFile) -> None:
    path = tmp_path / "shard.csv"
    path.write_text(TABLE.replace("p6,100,14", "p6,100,21"), encoding="utf-8")
    report = check_shard(path, label="y", schema=schema)
    assert column(report, "b")["out_of_range"] == 1
    assert report.reasons == ("column 'b': 1 value(s) outside the schema range [0, 20] (first at row 7)",)


def test_run_schema_checks_labels_and_feature_count(table: Path) -> None:
    report = check_shard(table, label="y", schema=Schema(num_features=3, labels=("0", "1", "2")))
    assert report.class_counts == (("0", 3), ("1", 3), ("2", 0))
    assert any("4 feature columns; the run schema expects 3" in r for r in report.reasons)


@pytest.mark.parametrize("output_format", ["json", "table"])
def test_no_raw_value_in_the_output(tmp_path: Path, table: Path, output_format: str) -> None:
    schema_path = tmp_path / "schema.toml"
    schema_path.write_text(SCHEMA, encoding="utf-8")
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    args = ["data", "check", str(table), "--schema", str(schema_path), "--format", output_format]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SECRET-123" not in result.output
    assert "SECRET" not in result.output
    if output_format == "json":
        assert "SECRET" not in json.dumps(json.loads(result.stdout))


def test_secret_in_a_feature_column_is_not_reported(tmp_path: Path) -> None:
    path = tmp_path / "shard.csv"
    path.write_text("a,b,y\n1,2,0\nSECRET-456,3,1\n4,5,0\n", encoding="utf-8")
    report = check_shard(path, label="y")
    assert not report.may_train
    assert "SECRET" not in json.dumps(report.to_dict())


def test_check_changes_nothing(table: Path) -> None:
    before = table.read_bytes()
    check_shard(table, label="y")
    assert table.read_bytes() == before


# ------------------------------------------------------------------------------------- schema file
def test_schema_file_to_run_schema(schema: SchemaFile) -> None:
    assert schema.feature_columns == ("a", "b", "c")
    assert schema.to_schema() == Schema(num_features=3, labels=("0", "1"))
    assert schema.range_of("b") == (0.0, 20.0)
    assert schema.range_of("a") is None


@pytest.mark.parametrize(("text", "keys"), [
    ('labels = [0, 1]\n[columns]\na = "float"\n', ["'label'"]),
    ('label = "y"\nlabels = [0]\n[columns]\na = "float"\ny = "int"\n', ["'labels'"]),
    ('label = "y"\nlabels = [0, 1]\n[columns]\na = "decimal"\ny = "int"\n', ["'columns.a'", "'decimal'"]),
    ('label = "y"\nlabels = [0, 1]\nid_columns = ["z"]\n[columns]\na = "float"\ny = "int"\n', ["'id_columns'"]),
    ('label = "y"\nlabels = [0, 1]\n[columns]\na = "float"\ny = "int"\n[ranges]\na = [5, 1]\n', ["'ranges.a'"]),
    ('label = "y"\nlabels = [0, 1]\ncolour = 1\n[columns]\na = "float"\ny = "int"\n', ["'colour'"]),
    ('label = "a"\nlabels = [0, 1]\n[columns]\na = "id"\ny = "int"\n', ["'label'", "identifier"]),
])
def test_schema_file_problems_name_the_file_and_key(tmp_path: Path, text: str, keys: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_schema_file(path)
    message = str(info.value)
    assert str(path) in message
    for key in keys:
        assert key in message


def test_schema_file_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("label = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_schema_file(path)
