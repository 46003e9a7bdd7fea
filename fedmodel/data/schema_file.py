"""A shard's schema file (TOML): columns and their types, the label and its values, identifiers, ranges.

Example::

    label = "diagnosis"
    labels = ["B", "M"]
    id_columns = ["patient_id"]

    [columns]
    patient_id = "id"
    radius = "float"
    visits = "int"
    diagnosis = "category"

    [ranges]
    radius = [0, 50]

Identifier columns (listed in ``id_columns`` or typed ``"id"``) never count as features; the run's
:class:`~fedmodel.data.schema.Schema` has one feature per remaining non-label column.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmodel.data.schema import Schema, normalise_label
from fedmodel.errors import ConfigError

COLUMN_TYPES: tuple[str, ...] = ("float", "int", "category", "id")
_TOP_KEYS: tuple[str, ...] = ("columns", "label", "labels", "id_columns", "ranges")


@dataclass(frozen=True)
class SchemaFile:
    """A validated schema file.

    Attributes
    ----------
    source
        The file it was read from (named in messages).
    columns
        Column name -> type, in file order; types are those of :data:`COLUMN_TYPES`.
    label
        The label column.
    labels
        The label values as written in data files (normalised: ``"1.0"`` -> ``"1"``).
    id_columns
        Identifier columns: never features, never reported by value.
    ranges
        Column name -> inclusive (min, max) of its values.
    """

    source: str
    columns: tuple[tuple[str, str], ...]
    label: str
    labels: tuple[str, ...]
    id_columns: tuple[str, ...]
    ranges: tuple[tuple[str, float, float], ...] = ()

    @property
    def column_types(self) -> dict[str, str]:
        """Column name -> declared type."""
        return dict(self.columns)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """The declared columns that are neither the label nor an identifier."""
        return tuple(n for n, _ in self.columns if n != self.label and n not in self.id_columns)

    def range_of(self, column: str) -> tuple[float, float] | None:
        """The declared (min, max) of ``column``, or None."""
        return next(((lo, hi) for name, lo, hi in self.ranges if name == column), None)

    def to_schema(self) -> Schema:
        """The run schema for training: feature count and label values."""
        return Schema(num_features=len(self.feature_columns), labels=self.labels)


def load_schema_file(path: Path) -> SchemaFile:
    """Read and validate a schema file; ConfigError listing every problem with the file and key.

    Parameters
    ----------
    path
        The TOML file.

    Returns
    -------
    SchemaFile
        The validated schema.
    """
    if not path.is_file():
        raise ConfigError([f"{path}: schema file not found"])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the schema file is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    return parse_schema(raw, str(path))


def parse_schema(raw: Mapping[str, Any], source: str) -> SchemaFile:
    """Validate the parsed TOML of a schema file; ConfigError listing every problem."""
    problems: list[str] = [f"{source}: key {k!r}: unknown; expected one of {', '.join(_TOP_KEYS)}"
                           for k in raw if k not in _TOP_KEYS]
    columns = _columns(raw.get("columns"), source, problems)
    names = [n for n, _ in columns]
    label = _label(raw.get("label"), names, source, problems)
    labels = _labels(raw.get("labels"), source, problems)
    ids = _id_columns(raw.get("id_columns", []), columns, label, source, problems)
    ranges = _ranges(raw.get("ranges", {}), dict(columns), source, problems)
    if columns and label and not [n for n in names if n != label and n not in ids]:
        problems.append(f"{source}: key 'columns': no feature column besides the label and identifiers")
    if problems:
        raise ConfigError(problems)
    return SchemaFile(source, columns, label, labels, ids, ranges)


def _columns(value: Any, source: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not value:
        problems.append(f"{source}: key 'columns': expected a table [columns] of name = type")
        return ()
    out: list[tuple[str, str]] = []
    for name, kind in value.items():
        if kind not in COLUMN_TYPES:
            problems.append(f"{source}: key 'columns.{name}': {kind!r}; expected one of {', '.join(COLUMN_TYPES)}")
        else:
            out.append((name, kind))
    return tuple(out)


def _label(value: Any, names: list[str], source: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{source}: key 'label': expected the name of the label column")
        return ""
    if names and value not in names:
        problems.append(f"{source}: key 'label': {value!r} is not in [columns]")
    return value


def _labels(value: Any, source: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (str, int, float)) for v in value):
        problems.append(f"{source}: key 'labels': expected a list of label values (strings or numbers)")
        return ()
    labels = tuple(normalise_label(str(v)) for v in value)
    if len(set(labels)) < 2:
        problems.append(f"{source}: key 'labels': expected at least two distinct label values")
    elif len(set(labels)) != len(labels):
        problems.append(f"{source}: key 'labels': a value is listed twice")
    return labels


def _id_columns(value: Any, columns: tuple[tuple[str, str], ...], label: str, source: str,
                problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{source}: key 'id_columns': expected a list of column names")
        return ()
    types = dict(columns)
    for name in value:
        if types and name not in types:
            problems.append(f"{source}: key 'id_columns': {name!r} is not in [columns]")
        elif types.get(name, "id") != "id":
            problems.append(f"{source}: key 'columns.{name}': {types[name]!r}, but {name!r} is in id_columns; "
                            "expected 'id'")
    ids = tuple(dict.fromkeys([*value, *(n for n, t in columns if t == "id")]))
    if label in ids:
        problems.append(f"{source}: key 'label': the label column {label!r} cannot be an identifier column")
    return ids


def _ranges(value: Any, types: dict[str, str], source: str, problems: list[str]) -> tuple[tuple[str, float, float], ...]:
    if not isinstance(value, dict):
        problems.append(f"{source}: key 'ranges': expected a table [ranges] of name = [min, max]")
        return ()
    out: list[tuple[str, float, float]] = []
    for name, bounds in value.items():
        key = f"{source}: key 'ranges.{name}'"
        if name not in types:
            problems.append(f"{key}: {name!r} is not in [columns]")
        elif types[name] not in ("float", "int"):
            problems.append(f"{key}: column {name!r} is {types[name]!r}; expected a float or int column")
        elif not _is_bounds(bounds):
            problems.append(f"{key}: expected [min, max], two finite numbers with min <= max")
        else:
            out.append((name, float(bounds[0]), float(bounds[1])))
    return tuple(out)


def _is_bounds(value: Any) -> bool:
    if not isinstance(value, list) or len(value) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        return False
    return bool(value[0] <= value[1])
