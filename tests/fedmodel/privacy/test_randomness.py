"""Where privacy draws come from: the run's seed in a simulation, the OS CSPRNG at a deployed node."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from fedmodel.privacy.randomness import (
    OsRandom,
    gaussian_source,
    os_standard_normal,
    os_uniform,
    owner_seed,
    plain_seed,
    round_seed,
)


def test_a_simulated_owner_gets_the_run_seeds_round_seed_and_a_deployed_one_none() -> None:
    assert owner_seed(42, 3, 1, simulated=True) == round_seed(42, 3, 1) != round_seed(42, 3, 2)
    assert owner_seed(42, 3, 1, simulated=False) is None


def test_plain_seeds_are_the_seed_plus_offset_or_fresh_from_the_os() -> None:
    assert plain_seed(7) == 7 and plain_seed(7, 1) == 8
    fresh = {plain_seed(None) for _ in range(20)}
    assert len(fresh) == 20 and all(0 <= s < 2**63 for s in fresh)


def test_a_torch_cpu_generator_keeps_only_32_bits_of_its_seed() -> None:
    """Why a seeded torch generator never draws a deployed node's noise (fedmodel.privacy.randomness)."""
    seed = plain_seed(None)
    low = torch.randn(8, generator=torch.Generator().manual_seed(seed % 2**32))
    assert torch.equal(torch.randn(8, generator=torch.Generator().manual_seed(seed)), low)


def test_os_uniforms_are_uniform_on_the_unit_interval() -> None:
    u = os_uniform(20_000)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    assert os_uniform(0).shape == (0,)


@pytest.mark.parametrize("count", [0, 1, 7, 20_001])
def test_os_normals_are_standard_normal_and_never_repeat(count: int) -> None:
    z = os_standard_normal(count)
    assert z.shape == (count,) and np.isfinite(z).all()
    if count > 1000:
        assert stats.kstest(z, "norm").pvalue > 1e-4
    if count:
        assert not np.array_equal(z, os_standard_normal(count))


def test_the_release_source_is_seeded_in_a_simulation_and_the_os_at_a_node() -> None:
    seeded = gaussian_source(5).normal(0.0, 2.0, size=(3, 4))
    assert np.array_equal(seeded, np.random.default_rng(5).normal(0.0, 2.0, size=(3, 4)))
    source = gaussian_source(None)
    assert isinstance(source, OsRandom)
    draws = source.normal(1.0, 2.0, size=(100, 50))
    assert draws.shape == (100, 50) and abs(draws.mean() - 1.0) < 0.2 and abs(draws.std() - 2.0) < 0.2
    with pytest.raises(ValueError, match="scale"):
        source.normal(0.0, -1.0, size=3)
