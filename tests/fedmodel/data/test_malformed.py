"""A corpus of malformed and messy shards: ``fedmodel data check`` names the file, row and column, and exits 0/1/2.

Each case writes one file into ``tmp_path``. Exit 2 (unusable) prints one ``error:`` line; exit 0 or 1
prints the JSON report, whose reasons must name the row and column.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from fedmodel.cli.data import data_app

Writer = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """One corpus file: how to write it, the exit code of ``data check``, what the message names."""

    file: str
    write: Writer
    exit_code: int
    needles: tuple[str, ...] = ()
    label: str | None = "y"
    schema: str | None = None


def text(content: str) -> Writer:
    return lambda path: path.write_text(content, encoding="utf-8", newline="")


def raw(content: bytes) -> Writer:
    return lambda path: path.write_bytes(content)


def parquet(**columns: list[Any]) -> Writer:
    return lambda path: pq.write_table(pa.table(columns), path)


def npz(**arrays: Any) -> Writer:
    return lambda path: np.savez(path, **arrays)


def truncated(writer: Writer) -> Writer:
    def write(path: Path) -> None:
        writer(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return write


GOOD = "a,b,y\n1,2,0\n3,4,1\n5,6,0\n"
X4 = np.arange(8, dtype=np.float64).reshape(4, 2)
Y4 = np.array([0, 1, 0, 1])
SCHEMA_01 = 'label = "y"\nlabels = [0, 1]\n[columns]\na = "float"\nb = "int"\ny = "category"\n[ranges]\na = [0, 10]\n'

CASES: list[Case] = [
    # -------------------------------------------------------------------------- CSV: unusable (2)
    Case("empty.csv", text(""), 2, ("the file is empty",)),
    Case("only-newlines.csv", text("\n\n\n"), 2, ("the file is empty",)),
    Case("latin1.csv", raw("a,b,y\n1,2,0\ncaf\u00e9,4,1\n".encode("latin-1")), 2,
         ("row 3, column 'a'", "not UTF-8")),
    Case("semicolons.csv", text("a;b;y\n1;2;0\n3;4;1\n"), 2, ("row 1", "separated by ';'", "expected ','")),
    Case("tabs.csv", text("a\tb\ty\n1\t2\t0\n"), 2, ("row 1", "separated by '\\t'")),
    Case("ragged-short.csv", text("a,b,y\n1,2,0\n3,4\n"), 2, ("row 3 has 2 fields", "expected 3")),
    Case("ragged-very-wide-row.csv", text("a,b,y\n1,2,0\n" + ",".join(["1"] * 500) + "\n"), 2,
         ("row 3 has 500 fields", "expected 3")),
    Case("no-label-column.csv", text("a,b,target\n1,2,0\n3,4,1\n"), 2,
         ("row 1", "no label column 'y'", "a, b, target")),
    Case("header-only.csv", text("a,b,y\n"), 2, ("only a header row",)),
    Case("header-and-blank-lines.csv", text("a,b,y\n\n\n"), 2, ("only a header row and blank lines",)),
    Case("duplicate-header.csv", text("a,b,a,y\n1,2,3,0\n4,5,6,1\n"), 2,
         ("row 1, column 3", "'a' is also column 1", "unique column names")),
    Case("trailing-delimiter.csv", text("a,b,y,\n1,2,0,\n3,4,1,\n"), 2,
         ("row 1, column 4", "no name", "trailing delimiter")),
    Case("unnamed-index-column.csv", text(",a,b,y\n0,1,2,0\n1,3,4,1\n"), 2, ("row 1, column 1", "no name")),
    Case("label-only.csv", text("y\n0\n1\n"), 2, ("no feature columns",)),
    Case("no-label-named.csv", text(GOOD), 2, ("--label",), label=None),
    Case("shard.txt", text(GOOD), 2, ("unsupported file type '.txt'",)),
    # -------------------------------------------------------------------------- CSV: may not train (1)
    Case("string-in-number.csv", text("a,b,y\n1,2,0\n3,oops,1\n5,6,0\n"), 1,
         ("column 'b'", "not numbers", "first at row 3")),
    Case("quoted-comma-in-number.csv", text('a,b,y\n"1,5",2,0\n3,4,1\n'), 1,
         ("column 'a'", "not numbers", "first at row 2")),
    Case("nan.csv", text("a,b,y\n1,2,0\nnan,4,1\n5,6,0\n"), 1, ("column 'a'", "1 missing value", "row 3")),
    Case("na-tokens.csv", text("a,b,y\nNA,2,0\nnull,4,1\n5,6,0\n"), 1, ("column 'a'", "2 missing value", "row 2")),
    Case("empty-cell.csv", text("a,b,y\n1,2,0\n3,4,1\n5,,0\n"), 1, ("column 'b'", "1 missing value", "row 4")),
    Case("infinity.csv", text("a,b,y\n1,2,0\n3,-inf,1\n5,6,0\n"), 1, ("column 'b'", "infinite", "row 3")),
    Case("all-missing-column.csv", text("a,b,y\n1,,0\n2,,1\n"), 1, ("column 'b'", "every value is missing")),
    Case("one-class.csv", text("a,b,y\n1,2,7\n3,4,7\n"), 1, ("column 'y'", "1 class(es)", "at least 2")),
    Case("missing-label-value.csv", text("a,b,y\n1,2,0\n3,4,\n5,6,1\n"), 1,
         ("column 'y'", "without a label", "row 3")),
    Case("blank-lines.csv", text("a,b,y\n1,2,0\n\n3,4,1\n"), 1, ("blank line", "first at row 3")),
    Case("label-outside-schema.csv", text("a,b,y\n1,2,0\n3,4,1\n5,6,7\n"), 1,
         ("column 'y'", "label outside", "row 4"), schema=SCHEMA_01),
    Case("range-violation.csv", text("a,b,y\n1,2,0\n11,4,1\n5,6,0\n"), 1,
         ("column 'a'", "outside the schema range [0, 10]", "row 3"), schema=SCHEMA_01),
    Case("not-whole-number.csv", text("a,b,y\n1,2,0\n3,4.5,1\n5,6,0\n"), 1,
         ("column 'b'", "not whole numbers", "row 3", "'int'"), schema=SCHEMA_01),
    Case("undeclared-column.csv", text("a,b,c,y\n1,2,3,0\n3,4,5,1\n"), 1,
         ("column 'c' is not declared",), schema=SCHEMA_01),
    Case("missing-declared-column.csv", text("a,y\n1,0\n3,1\n"), 1,
         ("column 'b' is declared", "not in the file"), schema=SCHEMA_01),
    # -------------------------------------------------------------------------- CSV: may train (0)
    Case("good.csv", text(GOOD), 0),
    Case("bom.csv", raw(b"\xef\xbb\xbfy,a,b\n0,1,2\n1,3,4\n"), 0),
    Case("crlf.csv", text("a,b,y\r\n1,2,0\r\n3,4,1\r\n"), 0),
    Case("quoted-comma-in-label.csv", text('a,b,y\n1,2,"red, dark"\n3,4,blue\n'), 0),
    Case("negative-zero.csv", text("a,b,y\n-0.0,2,0\n0,-0,1\n"), 0),
    Case("scientific-notation.csv", text("a,b,y\n1e-3,2.5E+4,0\n-1.2e2,4,1\n"), 0),
    Case("label-first.csv", text("y,a,b\n0,1,2\n1,3,4\n"), 0),
    Case("label-last.csv", text("a,b,y\n1,2,0\n3,4,1\n"), 0),
    Case("very-wide-file.csv", text(",".join(f"f{i}" for i in range(400)) + ",y\n"
                                    + ",".join(["1"] * 400) + ",0\n" + ",".join(["2"] * 400) + ",1\n"), 0),
    Case("duplicates-and-constant.csv", text("a,b,y\n1,5,0\n1,5,0\n2,5,1\n"), 0),
    Case("schema-ok.csv", text("a,b,y\n1,2,0\n3,4,1\n"), 0, schema=SCHEMA_01),
    # -------------------------------------------------------------------------- Parquet
    Case("not-parquet.parquet", text(GOOD), 2, ("not a readable Parquet file",)),
    Case("truncated.parquet", truncated(parquet(a=[1.0, 2.0], y=[0, 1])), 2, ("not a readable Parquet file",)),
    Case("no-label.parquet", parquet(a=[1.0, 2.0], target=[0, 1]), 2, ("no label column 'y'", "the columns are: a, target")),
    Case("no-rows.parquet", lambda p: pq.write_table(pa.table({"a": pa.array([], pa.float64()),
                                                                "y": pa.array([], pa.int64())}), p),
         2, ("no rows",)),
    Case("nulls.parquet", parquet(a=[1.0, None, 3.0, 4.0], y=[0, 1, 0, 1]), 1,
         ("column 'a'", "1 missing value", "row 1 (0-based)")),
    Case("text-feature.parquet", parquet(a=[1.0, 2.0], b=["p", "q"], y=[0, 1]), 1, ("column 'b'", "holds text")),
    Case("null-label.parquet", parquet(a=[1.0, 2.0, 3.0], y=["u", "v", None]), 1,
         ("column 'y'", "without a label", "row 2 (0-based)")),
    Case("good.parquet", parquet(a=[1.0, 2.0, 3.0], b=[1, 2, 3], y=["u", "v", "u"]), 0),
    # -------------------------------------------------------------------------- NPZ
    Case("truncated.npz", truncated(npz(x=X4, y=Y4)), 2, ("not a readable .npz file",)),
    Case("not-a-zip.npz", text("not a zip archive\n" * 4), 2, ("not a readable .npz file",)),
    Case("object-array.npz", npz(x=np.array([[1, "a"], [2, "b"]], dtype=object), y=np.array([0, 1])), 2,
         ("Python objects", "never unpickles")),
    Case("missing-x.npz", npz(data=X4, y=Y4), 2, ("no feature array", "found data, y")),
    Case("missing-y.npz", npz(x=X4, labels=Y4), 2, ("no label array 'y'",)),
    Case("three-d-x.npz", npz(x=np.zeros((4, 2, 2)), y=Y4), 2, ("array 'x'", "(4, 2, 2)", "expected 2-D")),
    Case("label-length.npz", npz(x=X4, y=Y4[:3]), 2, ("array 'y'", "(3,)", "expected (4,)")),
    Case("text-x.npz", npz(x=np.array([["a", "b"], ["c", "d"]]), y=np.array([0, 1])), 2, ("expected numbers",)),
    Case("nan.npz", npz(x=np.where(np.arange(8).reshape(4, 2) == 5, np.nan, X4), y=Y4), 1,
         ("column 'feature_1'", "missing value", "row 2 (0-based)")),
    Case("inf.npz", npz(x=np.where(np.arange(8).reshape(4, 2) == 6, np.inf, X4), y=Y4), 1,
         ("column 'feature_0'", "infinite", "row 3 (0-based)")),
    Case("one-class.npz", npz(x=X4, y=np.zeros(4)), 1, ("column 'y'", "1 class(es)")),
    Case("good.npz", npz(x=X4, y=Y4), 0, label=None),
]


def invoke(args: list[str]) -> Result:
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    return CliRunner().invoke(app, args)


def check_args(tmp_path: Path, case: Case) -> tuple[Path, list[str]]:
    path = tmp_path / case.file
    case.write(path)
    args = ["data", "check", str(path), "--format", "json"]
    if case.label is not None:
        args += ["--label", case.label]
    if case.schema is not None:
        schema = tmp_path / "schema.toml"
        schema.write_text(case.schema, encoding="utf-8")
        args += ["--schema", str(schema)]
    return path, args


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_corpus_case(tmp_path: Path, case: Case) -> None:
    path, args = check_args(tmp_path, case)
    result = invoke(args)
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output
    if case.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        message = lines[0]
        assert f"{path}:" in message
    else:
        report = json.loads(result.stdout)
        assert report["file"] == str(path)
        assert report["may_train"] is (case.exit_code == 0)
        message = "\n".join(report["reasons"])
    for needle in case.needles:
        assert needle in message


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert {c.exit_code for c in CASES} == {0, 1, 2}


class _Touch:
    """Unpickling this object would create a file: the check must never unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return pathlib.Path.touch, (self.marker,)


def test_object_array_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([[_Touch(marker)]], dtype=object), y=np.array([0]))
    result = invoke(["data", "check", str(path)])
    assert result.exit_code == 2
    assert "never unpickles" in result.output
    assert not marker.exists()
