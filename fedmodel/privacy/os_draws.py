"""Opacus' two privacy draws, DP-SGD noise and Poisson sampling, taken from the OS CSPRNG (a deployed node).

Opacus 1.6 draws both from ``torch.Generator`` objects (Mersenne Twister); its ``secure_mode`` swaps in
``torchcsprng``, which is not installed. Here, for one owner's round:

* :func:`arm_os_noise` gives the ``DPOptimizer`` an ``add_noise`` that is Opacus' own (1.6) with the
  noise from :func:`fedmodel.privacy.randomness.os_standard_normal`; it still reads the optimizer's
  ``noise_multiplier`` and ``max_grad_norm``;
* :func:`os_poisson_loader` is Opacus' Poisson loader with a sampler whose uniforms come from
  :func:`fedmodel.privacy.randomness.os_uniform`.

Why the OS and not a seeded generator: see :mod:`fedmodel.privacy.randomness`.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MethodType
from typing import Any

import numpy as np
import torch
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from fedmodel.privacy.randomness import os_standard_normal, os_uniform


def os_normal_like(references: list[torch.Tensor], std: float) -> list[torch.Tensor]:
    """Gaussian noise of standard deviation ``std`` for each tensor, shaped, typed and placed like it (one draw
    from the OS for all of them); zeros when std is 0."""
    if std == 0:
        return [torch.zeros_like(r) for r in references]
    draws = torch.from_numpy(os_standard_normal(sum(r.numel() for r in references)))
    out, start = [], 0
    for r in references:
        part = draws[start:start + r.numel()].reshape(tuple(r.shape))
        out.append((part * std).to(dtype=r.dtype, device=r.device))
        start += r.numel()
    return out


def _add_os_noise(self: DPOptimizer) -> None:
    """``DPOptimizer.add_noise`` of Opacus 1.6, the noise drawn from the OS CSPRNG."""
    for p in self.params:
        _check_processed_flag(p.summed_grad)
    noises = os_normal_like([p.summed_grad for p in self.params], self.noise_multiplier * self.max_grad_norm)
    for p, noise in zip(self.params, noises, strict=True):
        p.grad = (p.summed_grad + noise).view_as(p)
        _mark_as_processed(p.summed_grad)


def arm_os_noise(optimizer: Any, on: bool) -> None:
    """Make ``optimizer`` draw its noise from the OS (``on``), or from its generator again (Opacus' own).

    Raises
    ------
    TypeError
        ``on`` for an optimizer other than Opacus' plain ``DPOptimizer`` (whose ``add_noise`` this
        replaces): refused rather than trained with predictable noise.
    """
    if not on:
        vars(optimizer).pop("add_noise", None)
        return
    if type(optimizer) is not DPOptimizer:
        raise TypeError(f"noise from the OS is implemented for Opacus' DPOptimizer, not {type(optimizer).__name__}")
    optimizer.add_noise = MethodType(_add_os_noise, optimizer)
    optimizer.generator = None  # nothing seeded is left to draw from


class OsPoissonSampler(UniformWithReplacementSampler):
    """Opacus' Poisson sampler (each row in each batch with probability ``sample_rate``), uniforms from the OS."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int | None = None) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, generator=None, steps=steps)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield np.flatnonzero(os_uniform(self.num_samples) < self.sample_rate).tolist()


def os_poisson_loader(private_loader: DataLoader[Any]) -> DataLoader[Any]:
    """``private_loader`` (Opacus' Poisson loader) with its sampling drawn from the OS: same rows, rate, steps
    and empty-batch handling (its collate function)."""
    sampler = private_loader.batch_sampler
    if not isinstance(sampler, UniformWithReplacementSampler):
        raise TypeError(f"expected Opacus' Poisson sampler, got {type(sampler).__name__}")
    os_sampler = OsPoissonSampler(num_samples=sampler.num_samples, sample_rate=sampler.sample_rate,
                                  steps=sampler.steps)
    return DataLoader(private_loader.dataset, batch_sampler=os_sampler, collate_fn=private_loader.collate_fn,
                      num_workers=private_loader.num_workers, pin_memory=private_loader.pin_memory)
