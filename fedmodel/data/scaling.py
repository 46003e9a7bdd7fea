"""Federated scaling statistics as differentially private sums.

Every owner must scale its features with the same statistics, and no owner may reveal its own.
Each owner releases, once per run, per-feature sums of its cleaned (not yet scaled) rows with
Gaussian noise:

* values are first mapped into ``[-1, 1]`` with public bounds (``u = (x - centre) / half_width``,
  clipped), so one row changes each per-feature count by at most 1, each sum of ``u`` by at most 1
  and each sum of ``u**2`` by at most 1: the L2 sensitivity of the ``3 x d`` vector is ``sqrt(3 d)``;
* Gaussian noise of standard deviation ``noise_multiplier * sqrt(3 d)`` is added to every entry
  (the Gaussian mechanism; its RDP cost is charged to the owner before the release, see
  :meth:`fedmodel.privacy.OwnerPrivacyState.charge_gaussian`).

The coordinator adds the owners' noisy sums and derives mean and standard deviation per feature.
The public bounds are the declared ranges when there are any, else the range of the
coordinator's own held-out data (which is not any owner's data) widened by a margin; values
outside them are clipped for the statistics only, never in the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedmodel.data.profile import iqr_fences
from fedmodel.errors import FedModelError

if TYPE_CHECKING:
    from fedmodel.privacy.randomness import OsRandom

BOUNDS_MARGIN = 0.1
"""Public bounds from the coordinator's data are widened by this share of the range on each side."""
BOUNDS_IQR_K = 3.0
"""Values of the coordinator's data beyond this many interquartile ranges do not set the public bounds."""
MIN_STD_SHARE = 0.01
"""Smallest standard deviation released, as a share of the bounds' half-width (noise can drive it to 0)."""


@dataclass(frozen=True)
class ScalingBounds:
    """Public per-feature bounds ``[lo, hi]`` (never computed from any owner's data)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    @property
    def half_width(self) -> np.ndarray:
        return np.maximum((self.hi - self.lo) / 2, 1e-12)

    def to_lists(self) -> tuple[list[float], list[float]]:
        return [float(v) for v in self.lo], [float(v) for v in self.hi]


@dataclass(frozen=True)
class FederatedStats:
    """Per-feature statistics from the owners' noisy sums, with the noise's standard errors.

    ``mean_se``/``std_se`` are one standard error of the released mean and standard deviation
    caused by the noise alone (first-order); the report states three of them as the tolerance.
    """

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    mean_se: np.ndarray
    std_se: np.ndarray
    owners: int
    noise_multiplier: float


def public_bounds(x: np.ndarray, margin: float = BOUNDS_MARGIN, iqr_k: float = BOUNDS_IQR_K) -> ScalingBounds:
    """Bounds from data the coordinator holds itself (NaN ignored), robust to its outliers.

    Per feature: the range of the values within ``iqr_k`` interquartile ranges of the quartiles
    (one wild value must not stretch the bounds, or every owner's sums drown in the noise), then
    widened by ``margin`` of that range on each side.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise FedModelError("scaling: the coordinator's held-out data is empty; it cannot set public bounds")
    with np.errstate(all="ignore"):
        finite = np.where(np.isfinite(x), x, np.nan)
        fence_lo, fence_hi = iqr_fences(finite, iqr_k, ignore_nan=True)
        inside = np.where((finite >= fence_lo) & (finite <= fence_hi), finite, np.nan)
        lo, hi = np.nanmin(inside, axis=0), np.nanmax(inside, axis=0)
    empty = ~np.isfinite(lo) | ~np.isfinite(hi)
    lo, hi = np.where(empty, -1.0, lo), np.where(empty, 1.0, hi)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(hi), 1.0))
    return ScalingBounds((lo - margin * span).astype(np.float64), (hi + margin * span).astype(np.float64))


def sensitivity(num_features: int) -> float:
    """L2 sensitivity of the ``3 x d`` sums vector to adding or removing one row."""
    return math.sqrt(3 * num_features)


def feature_sums(x: np.ndarray, bounds: ScalingBounds) -> np.ndarray:
    """Exact ``[counts; sum u; sum u**2]`` (shape ``3 x d``) of the present, finite cells of ``x``."""
    _check_width(x, bounds)
    present = np.isfinite(x)
    u = np.clip((np.where(present, x, 0.0) - bounds.centre) / bounds.half_width, -1.0, 1.0)
    u = np.where(present, u, 0.0)
    return np.stack([present.sum(axis=0).astype(np.float64), u.sum(axis=0), (u * u).sum(axis=0)])


def noisy_feature_sums(x: np.ndarray, bounds: ScalingBounds, noise_multiplier: float,
                       rng: np.random.Generator | OsRandom) -> np.ndarray:
    """One owner's release: :func:`feature_sums` plus Gaussian noise ``noise_multiplier x sensitivity``.

    ``rng`` draws the noise: a seeded generator in a simulation, the OS CSPRNG at a deployed node
    (:func:`fedmodel.privacy.randomness.gaussian_source`).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier!r}")
    sums = feature_sums(x, bounds)
    scale = noise_multiplier * sensitivity(x.shape[1])
    return sums + rng.normal(0.0, scale, size=sums.shape)


def combine(releases: Sequence[np.ndarray], bounds: ScalingBounds, noise_multiplier: float) -> FederatedStats:
    """Mean and standard deviation per feature from the owners' noisy sums (the coordinator's side)."""
    if not releases:
        raise FedModelError("scaling: no owner returned its sums; the statistics cannot be computed")
    d = len(bounds.lo)
    for r in releases:
        if r.shape != (3, d) or not np.isfinite(r).all():
            raise FedModelError(f"scaling: an owner returned sums of shape {r.shape}; expected (3, {d}) finite values")
    total = np.sum(np.stack(releases), axis=0)
    count = np.maximum(total[0], 1.0)
    mean_u = np.clip(total[1] / count, -1.0, 1.0)
    var_u = np.clip(total[2] / count - mean_u**2, MIN_STD_SHARE**2, 1.0)
    noise = noise_multiplier * sensitivity(d) * math.sqrt(len(releases))  # std of each summed entry
    h = bounds.half_width
    std_u = np.sqrt(var_u)
    mean_se = h * noise / count
    var_se = noise / count * np.sqrt(1.0 + 4.0 * mean_u**2)
    return FederatedStats(
        count=total[0], mean=bounds.centre + h * mean_u, std=h * std_u, mean_se=mean_se,
        std_se=h * var_se / (2 * std_u), owners=len(releases), noise_multiplier=noise_multiplier,
    )


def pooled_exact(x: np.ndarray, bounds: ScalingBounds) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`combine` estimates, computed exactly on pooled data (for tests and tolerance checks)."""
    sums = feature_sums(x, bounds)
    count = np.maximum(sums[0], 1.0)
    mean_u = sums[1] / count
    var_u = np.maximum(sums[2] / count - mean_u**2, 0.0)
    return bounds.centre + bounds.half_width * mean_u, bounds.half_width * np.sqrt(var_u)


def _check_width(x: np.ndarray, bounds: ScalingBounds) -> None:
    if x.ndim != 2 or x.shape[1] != len(bounds.lo):
        raise FedModelError(f"scaling: the shard has {x.shape[-1] if x.ndim else 0} features; "
                            f"the run's bounds have {len(bounds.lo)}")
