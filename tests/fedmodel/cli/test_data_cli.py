"""``fedmodel data check``: tables, JSON, exit codes 0/1/2 and one ``error:`` line for bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from fedmodel.cli.data import data_app

GOOD = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n"
GAPPY = "a,b,y\n1,2,0\n3,,1\n5,6,0\n"


def invoke(args: list[str]) -> Result:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    return CliRunner().invoke(app, args)


def shard(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shard.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_table_output_may_train(tmp_path: Path) -> None:
    result = invoke(["data", "check", str(shard(tmp_path, GOOD)), "--label", "y"])
    assert result.exit_code == 0, result.output
    for title in ("fedmodel data check", "columns", "class balance", "verdict", "may train"):
        assert title in result.output


def test_table_output_may_not_train_lists_reasons(tmp_path: Path) -> None:
    result = invoke(["data", "check", str(shard(tmp_path, GAPPY)), "--label", "y"])
    assert result.exit_code == 1
    assert "may not train" in result.output
    assert "missing value" in result.output


def test_json_output(tmp_path: Path) -> None:
    result = invoke(["data", "check", str(shard(tmp_path, GAPPY)), "--label", "y", "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["rows"] == 3 and report["num_columns"] == 3
    assert report["class_balance"] == {"0": 2, "1": 1}
    assert report["may_train"] is False
    assert report["reasons"] == ["column 'b': 1 missing value(s) (first at row 3); a feature needs a number in every row"]


def test_thresholds_reach_the_report(tmp_path: Path) -> None:
    args = ["data", "check", str(shard(tmp_path, GOOD)), "--label", "y", "--iqr-k", "3", "--z", "2.5",
            "--format", "json"]
    report = json.loads(invoke(args).stdout)
    assert report["thresholds"] == {"iqr_k": 3.0, "z": 2.5}


@pytest.mark.parametrize(("extra", "needle"), [
    (["--format", "yaml"], "--format 'yaml'"),
    (["--iqr-k", "0"], "iqr-k 0.0"),
    (["--z", "-1"], "z -1.0"),
    (["--schema", "absent.toml"], "schema file not found"),
])
def test_bad_options_exit_2_with_one_error_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    result = invoke(["data", "check", str(shard(tmp_path, GOOD)), "--label", "y", *extra])
    assert result.exit_code == 2
    assert result.stderr.startswith("error:")
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_label_from_the_schema_file_and_conflict(tmp_path: Path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_text('label = "y"\nlabels = [0, 1]\n[columns]\na = "float"\nb = "float"\ny = "int"\n',
                      encoding="utf-8")
    path = shard(tmp_path, GOOD)
    assert invoke(["data", "check", str(path), "--schema", str(schema)]).exit_code == 0
    result = invoke(["data", "check", str(path), "--schema", str(schema), "--label", "a"])
    assert result.exit_code == 2
    assert "label = 'y'" in result.stderr


def test_bad_schema_file_names_the_key(tmp_path: Path) -> None:
    schema = tmp_path / "schema.toml"
    schema.write_text('label = "y"\nlabels = [0, 1]\n[columns]\na = "real"\ny = "int"\n', encoding="utf-8")
    result = invoke(["data", "check", str(shard(tmp_path, GOOD)), "--schema", str(schema)])
    assert result.exit_code == 2
    assert str(schema) in result.stderr
    assert "'columns.a'" in result.stderr
