"""The values a setting may take: named choices, and the partition and aggregation specs it parses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

BUNDLED_DATASETS: tuple[str, ...] = ("digits", "breast-cancer")
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam")
MODELS: tuple[str, ...] = ("logreg", "mlp")
PartitionKind = Literal["iid", "dirichlet", "pathological", "sample"]
MISSING_POLICIES: tuple[str, ...] = ("error", "drop", "mean", "median", "mode")
DUPLICATE_POLICIES: tuple[str, ...] = ("keep", "drop")
OUTLIER_POLICIES: tuple[str, ...] = ("keep", "clip", "drop")
SCALINGS: tuple[str, ...] = ("none", "zscore", "minmax")
SCALING_STATS: tuple[str, ...] = ("federated", "local")
TASKS: tuple[str, ...] = ("tabular", "classification", "causal-lm")
TEXT_DATASETS: tuple[str, ...] = ("rotten-tomatoes",)
"""Named text data sets (``task`` classification or causal-lm); see :mod:`fedmodel.llm.corpus`."""
BELOW_MINIMUM: tuple[str, ...] = ("stop", "retry")
CENTRAL_DP: tuple[str, ...] = ("none", "fixed", "adaptive")
RETRY_ATTEMPTS = 3
"""With ``below-minimum = retry``: how many times a round is tried before the run stops."""

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
"""Accepted ``device`` values; checked against this machine by :func:`fedmodel.device.resolve_device`."""


@dataclass(frozen=True)
class PartitionSpec:
    """How the training data is split across owners.

    ``iid``; ``dirichlet:ALPHA`` (label skew, smaller alpha is more skewed); ``pathological:K``
    (each owner holds K classes); ``sample:R`` (each owner draws R distinct rows at random from all the
    training rows, independently of the others: owners share rows, so a million owners fit a small
    data set; for rehearsing scale, since a record held by several owners is protected per owner only).
    """

    kind: PartitionKind = "iid"
    alpha: float | None = None
    classes_per_owner: int | None = None
    rows_per_owner: int | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parse ``iid``, ``dirichlet:ALPHA`` or ``pathological:K``; raise ValueError if malformed."""
        kind, _, arg = text.strip().partition(":")
        if kind == "iid" and not arg:
            return cls("iid")
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                raise ValueError(f"dirichlet needs a number, as in dirichlet:0.5, got {text!r}") from None
            if not math.isfinite(alpha) or alpha <= 0:
                raise ValueError(f"dirichlet alpha must be > 0, got {arg}")
            return cls("dirichlet", alpha=alpha)
        if kind == "pathological":
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"pathological needs a class count >= 1, as in pathological:2, got {text!r}")
            return cls("pathological", classes_per_owner=int(arg))
        if kind == "sample":
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"sample needs a row count >= 1, as in sample:2, got {text!r}")
            return cls("sample", rows_per_owner=int(arg))
        raise ValueError(f"expected iid, dirichlet:ALPHA, pathological:K or sample:R, got {text!r}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha!r}"
        if self.kind == "pathological":
            return f"pathological:{self.classes_per_owner}"
        if self.kind == "sample":
            return f"sample:{self.rows_per_owner}"
        return "iid"


AggregationKind = Literal["fedavg", "median", "trimmed-mean", "krum", "multikrum"]


@dataclass(frozen=True)
class AggregationSpec:
    """How the coordinator combines the owners' updates (Flower's strategies do the work).

    ``fedavg`` (example-weighted mean); ``median`` (coordinate-wise median, FedMedian);
    ``trimmed-mean:BETA`` (coordinate-wise mean without the BETA share of highest and of lowest values,
    0 < BETA < 0.5, FedTrimmedAvg); ``krum:F`` (the one update closest to its neighbours) and
    ``multikrum:F`` (the mean of the n - F closest) tolerate F Byzantine owners (Krum, MultiKrum).
    """

    kind: AggregationKind = "fedavg"
    beta: float | None = None
    byzantine: int | None = None

    @classmethod
    def parse(cls, text: str) -> AggregationSpec:
        """Parse ``fedavg``, ``median``, ``trimmed-mean:BETA``, ``krum:F`` or ``multikrum:F``; ValueError if bad."""
        kind, _, arg = text.strip().partition(":")
        if kind in ("fedavg", "median") and not arg:
            return cls(kind)  # type: ignore[arg-type]  # kind was just compared with the literals
        if kind == "trimmed-mean":
            try:
                beta = float(arg)
            except ValueError:
                raise ValueError(f"trimmed-mean needs a fraction, as in trimmed-mean:0.2, got {text!r}") from None
            if not (math.isfinite(beta) and 0 < beta < 0.5):
                raise ValueError(f"trimmed-mean fraction must be in (0, 0.5), got {arg}")
            return cls("trimmed-mean", beta=beta)
        if kind in ("krum", "multikrum"):
            if not arg.isdigit():
                raise ValueError(f"{kind} needs the number of Byzantine owners F >= 0, as in {kind}:1, got {text!r}")
            return cls(kind, byzantine=int(arg))  # type: ignore[arg-type]  # kind was just compared with the literals
        raise ValueError(f"expected fedavg, median, trimmed-mean:BETA, krum:F or multikrum:F, got {text!r}")

    def __str__(self) -> str:
        if self.kind == "trimmed-mean":
            return f"trimmed-mean:{self.beta!r}"
        if self.kind in ("krum", "multikrum"):
            return f"{self.kind}:{self.byzantine}"
        return self.kind

