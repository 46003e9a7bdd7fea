"""``fedmodel data clean``: the written CSV, the summary (table or JSON), identifiers, exit 2 and one error line."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fedmodel.cli import app

SHARD = (
    "pid,a,b,y\n"
    "900001,1,10,0\n"
    "900002,,20,1\n"
    "900003,1,10,0\n"
    "900004,3,30,1\n"
)
SCHEMA = """
label = "y"
labels = [0, 1]
id_columns = ["pid"]

[columns]
pid = "id"
a = "float"
b = "float"
y = "category"
"""


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(app, ["data", "clean", *args])


def shard(tmp_path: Path) -> Path:
    path = tmp_path / "shard.csv"
    path.write_text(SHARD, encoding="utf-8")
    return path


def test_clean_writes_the_csv_and_prints_counts_as_json(tmp_path: Path) -> None:
    out = tmp_path / "clean.csv"
    result = invoke([str(shard(tmp_path)), "--label", "y", "--out", str(out), "--id-column", "pid",
                     "--missing", "drop", "--duplicates", "drop", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "rows_in": 4, "rows_out": 2, "cells_missing": 1, "cells_imputed": 0, "rows_dropped_missing": 1,
        "duplicates_dropped": 1, "outliers_clipped": 0, "rows_dropped_outliers": 0, "id_columns_dropped": 1,
        "id_columns_hashed": 0, "scaling": "none",
    }
    assert out.read_text(encoding="utf-8").splitlines() == ["a,b,y", "1.0,10.0,0", "3.0,30.0,1"]


def test_table_output(tmp_path: Path) -> None:
    out = tmp_path / "clean.csv"
    result = invoke([str(shard(tmp_path)), "--label", "y", "--out", str(out), "--id-column", "pid",
                     "--missing", "mean", "--scaling", "minmax"])
    assert result.exit_code == 0, result.output
    assert "fedmodel data clean" in result.stdout and "cells imputed" in result.stdout
    assert "900001" not in result.stdout
    assert out.read_text(encoding="utf-8").splitlines() == [
        "a,b,y", "0.0,0.0,0", "0.33333334,0.5,1", "0.0,0.0,0", "1.0,1.0,1",
    ]


def test_schema_identifiers_are_hashed(tmp_path: Path) -> None:
    schema, key_file, out = tmp_path / "schema.toml", tmp_path / "owner.key", tmp_path / "clean.csv"
    schema.write_text(SCHEMA, encoding="utf-8")
    result = invoke([str(shard(tmp_path)), "--schema", str(schema), "--out", str(out), "--missing", "drop",
                     "--ids", "hash", "--key-file", str(key_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["id_columns_hashed"] == 1
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    digests = [hmac.new(key, p, hashlib.sha256).hexdigest() for p in (b"900001", b"900003", b"900004")]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "pid,a,b,y"
    assert [line.split(",")[0] for line in lines[1:]] == digests
    assert "900001" not in out.read_text(encoding="utf-8")


def test_missing_value_is_one_error_line_naming_row_and_column(tmp_path: Path) -> None:
    out = tmp_path / "clean.csv"
    result = invoke([str(shard(tmp_path)), "--label", "y", "--out", str(out), "--id-column", "pid"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:")
    assert "row 3, column 'a': the value is missing" in result.stderr
    assert "Traceback" not in result.output and "900002" not in result.output
    assert not out.exists()


def test_refuses_to_overwrite_the_input(tmp_path: Path) -> None:
    path = shard(tmp_path)
    result = invoke([str(path), "--label", "y", "--out", str(path), "--missing", "mean"])
    assert result.exit_code == 2
    assert "is the input file" in result.stderr
    assert path.read_text(encoding="utf-8") == SHARD


@pytest.mark.parametrize(("extra", "needles"), [
    (["--missing", "guess", "--scaling", "log"], ["--missing 'guess': expected error | drop | mean | median | mode",
                                                  "--scaling 'log': expected none | zscore | minmax"]),
    (["--outlier-k", "0"], ["--outlier-k 0.0: expected a positive number"]),
    (["--ids", "hash"], ["--ids hash: needs --key-file"]),
    (["--format", "yaml"], ["--format 'yaml': expected table | json"]),
    (["--id-column", "patient"], ["no identifier column 'patient'; the columns are: pid, a, b, y"]),
])
def test_bad_options_exit_2(tmp_path: Path, extra: list[str], needles: list[str]) -> None:
    out = tmp_path / "clean.csv"
    result = invoke([str(shard(tmp_path)), "--label", "y", "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:")
    for needle in needles:
        assert needle in result.stderr
    assert not out.exists()


def test_output_must_be_csv(tmp_path: Path) -> None:
    result = invoke([str(shard(tmp_path)), "--label", "y", "--out", str(tmp_path / "clean.parquet")])
    assert result.exit_code == 2 and "expected a .csv file" in result.stderr
