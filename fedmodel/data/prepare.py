"""An owner's rows on their way to training: the gate, the quality counts, cleaning and scaling.

The same steps run at a deployed node (its own file) and at a simulated owner (its partition of the
run's data set), and at the coordinator for its held-out test rows, so every party scales with the
same statistics. Nothing here leaves the owner except the counts of :func:`quality_counts` and the
cleaning summary (numbers of rows and cells, never a value).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedmodel.config import RunConfig
from fedmodel.data.cleaning import CleaningSpec, FeatureStats, RawTable, clean, read_raw_table
from fedmodel.data.dataset import Dataset
from fedmodel.data.profile import profile_columns
from fedmodel.data.quality import check_shard
from fedmodel.data.scaling import ScalingBounds
from fedmodel.data.schema import Schema
from fedmodel.errors import DataValidationError

IQR_K_FOR_COUNTS = 1.5
"""The IQR multiplier of the outlier count in the quality summary (as ``fedmodel data check``)."""


@dataclass(frozen=True)
class PreparedShard:
    """What an owner trains on, and the counts it may report about how it got there."""

    data: Dataset
    summary: dict[str, int]


def cleaning_spec(config: RunConfig, *, extra_id_columns: tuple[str, ...] = ()) -> CleaningSpec:
    """The run's cleaning settings (plus identifier columns the owner names itself)."""
    ids = tuple(dict.fromkeys(config.id_columns + extra_id_columns))
    return CleaningSpec(missing=config.missing, duplicates=config.duplicates, outliers=config.outliers,  # type: ignore[arg-type]  # RunConfig checked these against CleaningSpec's choices
                        outlier_k=config.outlier_k, scaling=config.scaling, id_columns=ids)  # type: ignore[arg-type]  # RunConfig checked these against CleaningSpec's choices


def needs_tolerant_read(spec: CleaningSpec) -> bool:
    """Gaps are cleaned, or identifier columns must be kept out of the features."""
    return spec.missing != "error" or bool(spec.id_columns)


def as_raw(data: Dataset, source: str, schema: Schema) -> RawTable:
    """A partition (or any Dataset, NaN for gaps) as a table to clean; labels as the run's schema names them.

    A bundled data set's schema names its classes by code ("0", "1"), a file's by the values in the
    file; ``data.y`` indexes both.
    """
    if len(schema.labels) != data.num_classes:
        raise DataValidationError(f"{source}: {data.num_classes} classes; the run's schema declares "
                                  f"{len(schema.labels)}")
    d = data.num_features
    rows = data.rows if data.rows is not None else np.arange(len(data))
    return RawTable(
        source=source, x=data.x.astype(np.float64), labels=tuple(schema.labels[int(i)] for i in data.y),
        feature_names=data.feature_names, ids={}, rows=np.asarray(rows, dtype=np.int64),
        zero_based=data.rows is None or data.zero_based, not_numbers=np.zeros(d, np.int64),
        non_finite=np.zeros(d, np.int64),
    )


def read_owner_file(path: Path, label: str, schema: Schema, spec: CleaningSpec) -> RawTable:
    """A deployed owner's file through the gate, as a table to clean.

    Without a cleaning policy for gaps the gate is ``fedmodel data check``'s verdict against the
    run's schema: any reason it gives refuses the shard, all reasons in one message. With one, the
    file is read tolerantly and cleaning decides (a column with nothing to impute from, no row left).
    """
    if not needs_tolerant_read(spec):
        report = check_shard(path, label=label, schema=schema)
        if not report.may_train:
            raise DataValidationError(f"{path}: " + "; ".join(report.reasons))
    return _read_cached(str(path), _mtime(path), label, spec.id_columns)


@lru_cache(maxsize=2)
def _read_cached(path: str, mtime: float, label: str, id_columns: tuple[str, ...]) -> RawTable:
    del mtime  # part of the cache key: a changed file is read again
    return read_raw_table(Path(path), label, id_columns)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0  # the reader names the missing file


def quality_counts(raw: RawTable, iqr_k: float = IQR_K_FOR_COUNTS) -> dict[str, int]:
    """Counts of what the raw rows hold (no value): rows, gaps, duplicates, outliers, constant columns.

    From the data profile (:func:`fedmodel.data.profile.profile_columns`) of the features, where a
    cell is present when it is a finite number: ``missing-cells`` counts every other cell (gaps, text
    and infinities, which the raw table holds as NaN); outliers by the IQR rule over each column's
    present cells (columns with >= 2 of them); constant columns have one distinct present value.
    """
    x = raw.x
    present = np.isfinite(x)
    profiles = profile_columns(raw.feature_names, x, ~present, iqr_k=iqr_k)
    keyed = [tuple(np.where(present[i], x[i], np.inf).tolist()) + (raw.labels[i],) for i in range(x.shape[0])]
    return {
        "rows": int(x.shape[0]), "features": int(x.shape[1]), "id-columns": len(raw.ids),
        "missing-cells": sum(p.missing for p in profiles), "not-numbers": int(np.sum(raw.not_numbers)),
        "infinite-values": int(np.sum(raw.non_finite)), "duplicate-rows": len(keyed) - len(set(keyed)),
        "outlier-cells-iqr": sum(p.outliers_iqr for p in profiles),
        "constant-columns": sum(p.constant for p in profiles),
    }


def prepare_shard(raw: RawTable, spec: CleaningSpec, schema: Schema, *, name: str,
                  stats: FeatureStats | None = None, impute: np.ndarray | None = None) -> PreparedShard:
    """Clean ``raw`` and encode it against the run's schema; the counts of the raw rows and of cleaning."""
    schema.check_features(len(raw.feature_names), raw.source, raw.feature_names)
    result = clean(raw, spec, stats=stats, impute_values=impute)
    y = np.asarray(schema.encode(list(result.labels), raw.source,
                                 [_row_name(r, raw.zero_based) for r in result.rows], column=raw.label_column),
                   dtype=np.int64)
    data = Dataset(name, result.x.astype(np.float32), y, schema.labels, raw.feature_names,
                   rows=result.rows, zero_based=raw.zero_based)
    counts = quality_counts(raw)
    cleaned = {f"clean-{k.replace('_', '-')}": int(v) for k, v in result.summary.to_dict().items()
               if isinstance(v, (int, np.integer))}
    return PreparedShard(data, {**counts, **cleaned})


def local_statistics(spec: CleaningSpec, *, stats: FeatureStats | None, impute: np.ndarray | None,
                     scaled: bool = True) -> tuple[str, ...]:
    """The cleaning steps of ``spec`` that would use statistics of the owner's own rows, each naming its option.

    Such a step lets one record move every other row (a quartile, mean, median, mode or scale moves
    with it), so DP-SGD's record-level guarantee no longer covers the preprocessing. Steps that act on
    each record alone are not listed: ``missing = drop`` drops a row for its own gaps, and
    ``duplicates = drop`` keeps one of identical rows, so adding or removing one record adds or removes
    at most one row of the result (an identical one either way); identifier columns are dropped or
    hashed per row.

    Parameters
    ----------
    spec
        The run's cleaning settings.
    stats, impute
        The scaling statistics and mean-imputation values the message carries (the coordinator's
        public bounds or DP statistics); None when it carries none, so the owner's own would be used.
    scaled
        False when the rows are used unscaled (the feature-sums query): scaling does not count then.
    """
    uses: list[str] = []
    if spec.outliers != "keep":
        uses.append(f"outliers = {spec.outliers!r} (quartiles of the owner's rows)")
    if spec.missing in ("median", "mode") or (spec.missing == "mean" and impute is None):
        uses.append(f"missing = {spec.missing!r} (imputed with the owner's own {spec.missing}s)")
    if scaled and spec.scaling != "none" and stats is None:
        uses.append(f"scaling = {spec.scaling!r} with the owner's own statistics (scaling-stats = local, or no "
                    "federated statistics in the message)")
    return tuple(uses)


def coordinator_spec(spec: CleaningSpec) -> CleaningSpec:
    """The coordinator cleans its held-out rows like an owner, but keeps every row it can evaluate.

    Duplicates stay; outliers are clipped rather than dropped, as an owner's would be at prediction time.
    """
    return replace(spec, duplicates="keep", outliers="clip" if spec.outliers != "keep" else "keep")


def _row_name(row: int, zero_based: bool) -> int | str:
    return f"{int(row)} (0-based)" if zero_based else int(row)


# ------------------------------------------------------------------ scaling statistics on the wire
def stats_to_config(stats: FeatureStats | None, impute: np.ndarray | None) -> dict[str, Any]:
    """Scaling statistics (and mean-imputation values) as ConfigRecord lists; empty when local."""
    out: dict[str, Any] = {}
    if stats is not None:
        out.update({"scaling-mean": [float(v) for v in stats.mean], "scaling-std": [float(v) for v in stats.std],
                    "scaling-min": [float(v) for v in stats.minimum], "scaling-max": [float(v) for v in stats.maximum],
                    "scaling-count": float(stats.count)})
    if impute is not None:
        out["impute-values"] = [float(v) for v in impute]
    return out


def stats_from_config(record: Mapping[str, Any]) -> tuple[FeatureStats | None, np.ndarray | None]:
    """Inverse of :func:`stats_to_config`."""
    stats = None
    if "scaling-mean" in record:
        stats = FeatureStats(
            count=float(record["scaling-count"]), mean=np.asarray(record["scaling-mean"], np.float64),
            std=np.asarray(record["scaling-std"], np.float64), minimum=np.asarray(record["scaling-min"], np.float64),
            maximum=np.asarray(record["scaling-max"], np.float64),
        )
    impute = np.asarray(record["impute-values"], np.float64) if "impute-values" in record else None
    return stats, impute


def bounds_to_config(bounds: ScalingBounds) -> dict[str, Any]:
    lo, hi = bounds.to_lists()
    return {"bounds-lo": lo, "bounds-hi": hi}


def bounds_from_config(record: Mapping[str, Any]) -> ScalingBounds:
    return ScalingBounds(np.asarray(record["bounds-lo"], np.float64), np.asarray(record["bounds-hi"], np.float64))
