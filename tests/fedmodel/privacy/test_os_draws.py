"""Opacus' noise and Poisson sampling drawn from the OS (a deployed node's DP-SGD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmodel.privacy.os_draws import OsPoissonSampler, arm_os_noise, os_normal_like, os_poisson_loader


def test_os_noise_has_the_shapes_dtypes_and_scale_asked_for() -> None:
    refs = [torch.zeros(40, 50), torch.zeros(7, dtype=torch.float64)]
    noise = os_normal_like(refs, 3.0)
    assert [(n.shape, n.dtype) for n in noise] == [(r.shape, r.dtype) for r in refs]
    assert stats.kstest(noise[0].ravel().numpy() / 3.0, "norm").pvalue > 1e-4
    assert all(not n.any() for n in os_normal_like(refs, 0.0))


def test_the_os_sampler_takes_each_row_with_the_sample_rate_and_never_repeats() -> None:
    sampler = OsPoissonSampler(num_samples=2000, sample_rate=0.1, steps=50)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    sizes = np.array([len(b) for b in batches])
    assert abs(sizes.mean() - 200) < 15  # binomial(2000, 0.1): sd 13.4 per batch, 1.9 for the mean
    assert all(0 <= i < 2000 for b in batches for i in b) and batches != list(sampler)


def private(loader: DataLoader, seed: int = 1) -> tuple[nn.Module, object, DataLoader]:  # type: ignore[type-arg]
    model = nn.Linear(4, 2)
    engine = PrivacyEngine(accountant="rdp")
    return engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                               data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
                               noise_generator=torch.Generator().manual_seed(seed))


def test_an_armed_optimizer_adds_fresh_noise_and_disarmed_the_seeded_noise_again() -> None:
    data = DataLoader(TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
    model, optimizer, loader = private(data)

    def one_step() -> torch.Tensor:
        for p in model.parameters():
            p.data.zero_()
        xb, yb = torch.zeros(4, 4), torch.zeros(4, dtype=torch.long)
        optimizer.zero_grad()  # type: ignore[attr-defined]
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()  # type: ignore[attr-defined]
        return next(model.parameters()).detach().clone()

    arm_os_noise(optimizer, True)
    assert optimizer.generator is None  # type: ignore[attr-defined]
    assert not torch.equal(one_step(), one_step())  # the weights' gradient is 0: the step is noise alone
    arm_os_noise(optimizer, False)
    optimizer.generator = torch.Generator().manual_seed(3)  # type: ignore[attr-defined]
    first = one_step()
    optimizer.generator = torch.Generator().manual_seed(3)  # type: ignore[attr-defined]
    assert torch.equal(one_step(), first)
    with pytest.raises(TypeError, match="DPOptimizer"):
        arm_os_noise(torch.optim.SGD(model.parameters(), lr=1.0), True)


def test_the_os_loader_keeps_opacus_rows_rate_steps_and_empty_batches() -> None:
    data = DataLoader(TensorDataset(torch.arange(10.0).reshape(10, 1), torch.zeros(10, dtype=torch.long)),
                      batch_size=5)
    _, _, opacus_loader = private(data)
    loader = os_poisson_loader(opacus_loader)
    assert len(loader) == len(opacus_loader) == 2
    assert loader.batch_sampler.sample_rate == 0.5  # type: ignore[union-attr]
    empty = loader.collate_fn([])
    assert [tuple(t.shape) for t in empty] == [(0, 1), (0,)]
