"""The data schema a run declares, and the check of an owner's shard against it.

A run fixes the number of features and the label values as they appear in data files. Every owner
encodes its labels against that declared list (never against its own sorted values: a shard
missing a class would otherwise shift every class index), and a shard that does not fit is
refused with the file and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedmodel.errors import DataValidationError


def normalise_label(value: str) -> str:
    """One spelling per label: surrounding space dropped, integral numbers as integers ("1.0" -> "1")."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


@dataclass(frozen=True)
class Schema:
    """Feature count and label values (as written in data files) that every shard must match."""

    num_features: int
    labels: tuple[str, ...]

    def to_config(self) -> dict[str, int | str]:
        """Scalars for a Flower ConfigRecord."""
        return {"schema-features": self.num_features, "schema-labels": "\x1f".join(self.labels)}

    @classmethod
    def from_config(cls, record: dict[str, object]) -> Schema | None:
        """Inverse of :meth:`to_config`; None when the record carries no schema."""
        if "schema-features" not in record:
            return None
        return cls(int(record["schema-features"]), tuple(str(record["schema-labels"]).split("\x1f")))  # type: ignore[call-overload]  # the schema record's values are an int and a str

    def encode(self, labels: Sequence[str], source: str, rows: Sequence[int | str] | None = None, *,
               column: str = "") -> list[int]:
        """Class indices of ``labels``; DataValidationError naming the row (and ``column``) of the first unknown label."""
        index = {v: i for i, v in enumerate(self.labels)}
        out: list[int] = []
        for i, raw in enumerate(labels):
            code = index.get(normalise_label(raw))
            if code is None:
                where = f"row {rows[i]}" if rows is not None else f"row {i}"
                where += f", column {column!r}" if column else ""
                raise DataValidationError(
                    f"{source}: {where}: label {raw!r} is not one of the run's labels {', '.join(self.labels)}",
                    public=f"{source}: {where}: the label is not one of the run's labels",  # no value leaves
                )
            out.append(code)
        return out

    def check_features(self, num_features: int, source: str, names: Sequence[str] = ()) -> None:
        """DataValidationError unless the shard has the declared number of feature columns."""
        if num_features != self.num_features:
            listed = f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
            raise DataValidationError(
                f"{source}: {num_features} feature columns{listed}; the run expects {self.num_features} "
                "feature columns besides the label"
            )
