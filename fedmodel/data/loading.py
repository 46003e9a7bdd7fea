"""Load the data set a run names: a bundled one, or the user's file read strictly or tolerantly."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from fedmodel.config import RunConfig
from fedmodel.data.bundled import load_bundled
from fedmodel.data.cleaning import read_raw_table
from fedmodel.data.dataset import Dataset
from fedmodel.data.files import encode_labels, read_table


def load_dataset(config: RunConfig) -> Dataset:
    """Load the data set a run names: a bundled one or the user's CSV/Parquet/NPZ file.

    A file is read strictly (any gap refused, naming file, row and column) unless the run cleans
    missing values or names identifier columns: then it is read tolerantly (gaps as NaN, identifier
    columns left out) and every owner cleans its own rows (:mod:`fedmodel.data.prepare`).
    """
    tolerant = config.missing != "error" or bool(config.id_columns)
    return _load_cached(config.dataset, config.data_path, config.label, config.id_columns, tolerant)


@lru_cache(maxsize=4)
def _load_cached(dataset: str, data_path: str, label: str, id_columns: tuple[str, ...] = (),
                 tolerant: bool = False) -> Dataset:
    if dataset == "file" and tolerant:
        raw = read_raw_table(Path(data_path), label, id_columns)
        classes, y = encode_labels(list(raw.labels))
        return Dataset(Path(data_path).name, raw.x.astype(np.float32), y, classes, raw.feature_names,
                       rows=raw.rows, zero_based=raw.zero_based)
    if dataset == "file":
        return read_table(Path(data_path), label)
    return load_bundled(dataset)
