"""A text run's split: held-out texts, each owner's texts, a stratified sample of max-rows."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError
from fedmodel.llm import ModelSourceError
from fedmodel.llm.federated import check_text_run, load_text_dataset, text_split


def reviews(tmp_path: Path, texts: list[str]) -> Path:
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([t, "pos" if i % 4 == 0 else "neg"] for i, t in enumerate(texts))
    return path


def config(path: Path, **changes: object) -> RunConfig:
    return RunConfig.from_mapping({"task": "classification", "model-path": "/m", "dataset": "file",
                                   "data-path": str(path), "label": "label", "clients": 3, **changes})


def test_owners_and_the_test_split_share_no_text_and_cover_the_data(
    tmp_path: Path, random_texts: Callable[..., list[str]]
) -> None:
    split = text_split(config(reviews(tmp_path, random_texts(100))))
    owners = np.concatenate(split.owner_rows)
    assert len(np.intersect1d(owners, split.test_rows)) == 0 and len(np.unique(owners)) == len(owners)
    assert len(owners) + len(split.test_rows) == 100 and len(split.test_rows) == 20
    test = split.test()
    assert test.classes == ("neg", "pos") and test.labels is not None
    assert int(test.labels.sum()) == 5  # stratified: 25% positive, as in the file
    assert split.owner(1).texts == tuple(split.data.texts[i] for i in split.owner_rows[1])


def test_max_rows_is_a_stratified_sample_and_causal_lm_has_no_labels(
    tmp_path: Path, random_texts: Callable[..., list[str]]
) -> None:
    path = reviews(tmp_path, random_texts(200))
    sample = load_text_dataset(config(path, **{"max-rows": 80}))
    assert len(sample) == 80 and sample.labels is not None and int(sample.labels.sum()) == 20
    lm = text_split(config(path, task="causal-lm", label=""))
    assert lm.classes == () and lm.data.labels is None and len(lm.test_rows) == 40


def test_the_run_is_checked_before_it_starts(tmp_path: Path, bert_dir: Path,
                                             random_texts: Callable[..., list[str]]) -> None:
    path = reviews(tmp_path, random_texts(20))
    check_text_run(config(path, **{"model-path": str(bert_dir)}), simulated=True)
    with pytest.raises(ModelSourceError, match="model folder not found"):
        check_text_run(config(path, **{"model-path": str(tmp_path / "none")}), simulated=False)
    with pytest.raises(ConfigError, match="more owners than training rows"):
        check_text_run(config(path, **{"model-path": str(bert_dir), "clients": 17}), simulated=True)
