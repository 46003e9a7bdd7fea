"""Real data sets that ship inside an installed package: nothing is downloaded.

Both files come with scikit-learn (``sklearn/datasets/data``); they are read directly, without
importing scikit-learn, so loading costs milliseconds.

* ``digits``: UCI optical recognition of handwritten digits, 1797 images of 8x8 pixels (64
  features, values 0..16), 10 classes. Mapped to [-1, 1] by the fixed map ``pixel / 8 - 1`` (no
  statistic of the data is used; centred inputs train markedly better under DP noise).
* ``breast-cancer``: Wisconsin diagnostic breast cancer, 569 x 30, classes malignant/benign.
  Features span four orders of magnitude, so they are log1p-transformed and standardised with the
  mean and deviation of the whole public data set: a fixed preprocessing of public reference data,
  not something a real federation could do without sharing statistics.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
from pathlib import Path

import numpy as np

from fedmodel.data.dataset import Dataset
from fedmodel.errors import DataValidationError


def _sklearn_data_dir() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataValidationError(
            "the bundled data sets ship with scikit-learn, which is not installed: pip install scikit-learn"
        )
    return Path(spec.origin).parent / "datasets" / "data"


def load_bundled(name: str) -> Dataset:
    """Load a bundled data set by name (``digits`` or ``breast-cancer``)."""
    if name == "digits":
        return _digits(_sklearn_data_dir() / "digits.csv.gz")
    if name == "breast-cancer":
        return _breast_cancer(_sklearn_data_dir() / "breast_cancer.csv")
    raise DataValidationError(f"unknown bundled data set {name!r}")


def _digits(path: Path) -> Dataset:
    raw = np.loadtxt(io.StringIO(gzip.decompress(path.read_bytes()).decode("ascii")), delimiter=",")
    x = (raw[:, :-1] / 8.0 - 1.0).astype(np.float32)
    y = raw[:, -1].astype(np.int64)
    return Dataset(
        name="digits", x=x, y=y, classes=tuple(str(i) for i in range(10)),
        feature_names=tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8)),
        preprocessing="pixel / 8 - 1 (fixed, data-independent)",
    )


def _breast_cancer(path: Path) -> Dataset:
    with path.open(encoding="ascii") as fh:
        header = next(csv.reader(fh))
        raw = np.loadtxt(fh, delimiter=",")
    classes = tuple(header[2:])  # "569,30,malignant,benign"
    x = np.log1p(raw[:, :-1])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return Dataset(
        name="breast-cancer", x=x.astype(np.float32), y=raw[:, -1].astype(np.int64), classes=classes,
        feature_names=tuple(f"feature_{i}" for i in range(x.shape[1])),
        preprocessing="log1p, then standardised with statistics of the whole public data set",
    )
