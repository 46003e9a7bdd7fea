"""Federated scaling statistics: sensitivity of one row, exactness without noise, noise within its stated error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmodel.data.scaling import (
    ScalingBounds,
    combine,
    feature_sums,
    noisy_feature_sums,
    pooled_exact,
    public_bounds,
    sensitivity,
)
from fedmodel.errors import FedModelError


def _bounds(d: int) -> ScalingBounds:
    return ScalingBounds(np.full(d, -2.0), np.full(d, 6.0))


@pytest.mark.parametrize("seed", range(5))
def test_one_row_moves_the_sums_by_at_most_the_sensitivity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 7
    x = rng.normal(2, 5, size=(40, d))  # many values outside the bounds: clipped for the sums
    x[rng.random(x.shape) < 0.2] = np.nan
    row = rng.normal(2, 50, size=(1, d))
    row[0, 0] = np.inf
    with_row = feature_sums(np.vstack([x, row]), _bounds(d))
    without = feature_sums(x, _bounds(d))
    assert np.linalg.norm(with_row - without) <= sensitivity(d) + 1e-12
    extreme = np.full((1, d), 1e9)  # every |u| = 1: the bound is reached exactly
    assert np.linalg.norm(feature_sums(np.vstack([x, extreme]), _bounds(d)) - without) == pytest.approx(sensitivity(d))


def test_without_noise_the_owners_sums_give_the_pooled_statistics() -> None:
    rng = np.random.default_rng(1)
    shards = [rng.normal(loc, 1.5, size=(n, 3)) for loc, n in ((0.0, 50), (2.0, 80), (4.0, 30))]
    bounds = _bounds(3)
    stats = combine([feature_sums(s, bounds) for s in shards], bounds, noise_multiplier=1.0)
    mean, std = pooled_exact(np.vstack(shards), bounds)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(stats.std, std, rtol=1e-10)
    pooled = np.vstack(shards)
    np.testing.assert_allclose(mean, np.clip(pooled, -2, 6).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(stats.count, [160, 160, 160])


def test_noisy_statistics_stay_within_three_stated_standard_errors() -> None:
    rng = np.random.default_rng(7)
    d, owners = 4, 20
    shards = [rng.normal([0, 1, 2, 3], [1, 0.5, 2, 1], size=(2000, d)) for _ in range(owners)]
    bounds = ScalingBounds(np.full(d, -6.0), np.full(d, 10.0))
    mean, std = pooled_exact(np.vstack(shards), bounds)
    misses = 0
    for trial in range(50):
        noise_rng = np.random.default_rng(100 + trial)
        stats = combine([noisy_feature_sums(s, bounds, 5.0, noise_rng) for s in shards], bounds, 5.0)
        misses += int(np.sum(np.abs(stats.mean - mean) > 3 * stats.mean_se))
        misses += int(np.sum(np.abs(stats.std - std) > 3 * stats.std_se))
    assert misses <= 3  # 400 checks at 3 standard errors: about 1 expected
    # the stated error is small here: 40,000 rows
    assert np.all(stats.mean_se < 0.02) and np.all(stats.std_se < 0.15)


def test_noise_scale_is_the_noise_multiplier_times_the_sensitivity() -> None:
    x = np.zeros((10, 5))
    bounds = _bounds(5)
    draws = np.stack([noisy_feature_sums(x, bounds, 2.0, np.random.default_rng(s)) - feature_sums(x, bounds)
                      for s in range(400)])
    assert draws.std() == pytest.approx(2.0 * math.sqrt(15), rel=0.05)


def test_public_bounds_widen_the_coordinators_range() -> None:
    x = np.array([[0.0, 5.0], [10.0, 5.0], [np.nan, 5.0]])
    b = public_bounds(x, margin=0.1)
    np.testing.assert_allclose(b.lo, [-1.0, 4.5])
    np.testing.assert_allclose(b.hi, [11.0, 5.5])


def test_bad_releases_are_refused() -> None:
    bounds = _bounds(2)
    with pytest.raises(FedModelError, match="no owner"):
        combine([], bounds, 1.0)
    with pytest.raises(FedModelError, match=r"expected \(3, 2\)"):
        combine([np.zeros((3, 3))], bounds, 1.0)
    with pytest.raises(FedModelError, match="finite"):
        combine([np.full((3, 2), np.nan)], bounds, 1.0)
    with pytest.raises(FedModelError, match="bounds have 2"):
        feature_sums(np.zeros((4, 3)), bounds)
