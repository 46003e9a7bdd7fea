"""DP added by wrapping: Opacus DP-SGD around a model/optimizer/loader, or the no-privacy null object.

Both mechanisms expose the same two calls, so the training code has one path:

* ``wrap(model, optimizer, loader)`` returns the objects to train with;
* ``finish()`` records what was spent and returns the privacy metrics of this owner so far.

A process that trains owner after owner on one model and optimizer (a simulated node hosting a
cohort) can keep Opacus' wrapping of them in a :class:`KeptWrapping`: each owner then re-arms the
same per-sample-gradient model and DP optimizer with its own noise multiplier, clipping bound,
expected batch size, noise generator and accountant, instead of wrapping anew (about 0.7 ms and
most of Opacus' per-call Python work). What is computed is the same, bit for bit.

Where DP-SGD's randomness comes from is the ``noise_seed`` of :class:`OpacusDPSGD`: a seed (a
simulation) makes noise and Poisson sampling reproducible; no seed (a deployed node) draws both from
the OS CSPRNG (:mod:`fedmodel.privacy.os_draws`), so nobody else can predict them and a replay of the
round gets fresh noise (see :mod:`fedmodel.privacy.randomness`).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedmodel.errors import PrivacyBudgetExceeded
from fedmodel.privacy.accounting import ACCOUNTANT, OwnerPrivacyState, epsilon_spent


class PrivacyMechanism(Protocol):
    """What the local training loop needs from a privacy mechanism."""

    mode: str

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]: ...

    def finish(self) -> dict[str, float]: ...


class NoPrivacy:
    """The null object for ``--no-dp``: the same pipeline, nothing wrapped, no epsilon."""

    mode = "none"

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        return model, optimizer, loader

    def finish(self) -> dict[str, float]:
        return {}


class KeptWrapping:
    """Opacus' wrapping of one model and its optimizer, kept between the owners that train on them.

    Holds the ``GradSampleModule`` and ``DPOptimizer`` once the first owner wrapped ``model`` and
    ``optimizer``; :meth:`OpacusDPSGD.wrap` re-arms them for every later owner. Whoever keeps it
    must drop it when a training fails part-way (a half-done step may be left in it).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.private_model: nn.Module | None = None
        self.private_optimizer: Any = None

    def holds(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """True when it wraps exactly these objects already."""
        return self.private_model is not None and self.model is model and self.optimizer is optimizer


class OpacusDPSGD:
    """Opacus DP-SGD for one owner's round, continuing the owner's cumulative accounting.

    ``state.plan`` must be calibrated (see :func:`~fedmodel.privacy.accounting.plan_for_owner`).
    Poisson sampling is on; empty batches are trained through (Opacus adds pure noise), never
    skipped, so the accountant's step count is the real one. With ``kept`` (not in secure mode),
    the model and optimizer Opacus wrapped for an earlier owner are re-armed for this one.

    ``noise_seed`` seeds the noise and Poisson sampling (a simulation: reproducible); None draws both
    from the OS CSPRNG for every step (a deployed node: unpredictable, never the same twice).
    ``secure_mode`` is Opacus' own (it needs ``torchcsprng``).
    """

    mode = "dp-sgd"

    def __init__(self, state: OwnerPrivacyState, owner: int | str, *, noise_seed: int | None,
                 secure_mode: bool = False, kept: KeptWrapping | None = None) -> None:
        if state.plan is None:
            raise ValueError("OpacusDPSGD needs a calibrated privacy plan")
        self.state = state
        self.owner = owner
        self.noise_seed = noise_seed
        self.secure_mode = secure_mode
        self.kept = None if secure_mode else kept  # secure mode draws from a fresh engine's CSPRNG each time
        self._accountant: Any = None  # Opacus' accountant of this round (the engine's, or a re-armed one)
        self._reserved_from = 0

    def check_budget(self) -> None:
        """Refuse (typed) if this round would take the owner past its budget; trains nothing."""
        plan = self.state.plan
        assert plan is not None
        if self.state.steps + plan.steps_per_round <= plan.total_steps:
            return  # within the calibrated plan, whose epsilon is at most the budget
        planned = self.state.everything + [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
        projected = epsilon_spent(planned, plan.delta)
        if projected > plan.budget_epsilon:
            raise PrivacyBudgetExceeded(self.owner, self.state.epsilon(plan.delta), projected, plan.budget_epsilon)

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Any]
    ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        from opacus import PrivacyEngine

        plan = self.state.plan
        assert plan is not None
        self.check_budget()
        if abs(1.0 / len(loader) - plan.sample_rate) > 1e-12:
            raise RuntimeError(
                f"owner {self.owner}: sample rate 1/{len(loader)} differs from the plan's {plan.sample_rate}; "
                "the shard changed size during the run"
            )
        generator = None
        if self.noise_seed is not None and not self.secure_mode:
            generator = torch.Generator(device=next(model.parameters()).device).manual_seed(self.noise_seed)
        from_os = self.noise_seed is None and not self.secure_mode
        if self.kept is not None and self.kept.holds(model, optimizer):
            private_model, private_optimizer, private_loader = self._rearm(self.kept, loader, generator)
        else:
            engine = PrivacyEngine(accountant=ACCOUNTANT, secure_mode=self.secure_mode)
            engine.accountant.history = list(self.state.history)
            self._accountant = engine.accountant
            private_model, private_optimizer, private_loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=plan.noise_multiplier,
                max_grad_norm=plan.max_grad_norm, poisson_sampling=True, noise_generator=generator,
            )
            if self.kept is not None:
                self.kept.model, self.kept.optimizer = model, optimizer
                self.kept.private_model, self.kept.private_optimizer = private_model, private_optimizer
        if from_os or self.kept is not None:  # a kept optimizer may come from an owner of the other kind
            from fedmodel.privacy.os_draws import arm_os_noise, os_poisson_loader

            arm_os_noise(private_optimizer, from_os)
            if from_os:
                private_loader = os_poisson_loader(private_loader)
        # Reserve the round's steps before any training: a crash mid-round leaves them counted as spent.
        self._reserved_from = self.state.steps
        self.state.record(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        return private_model, private_optimizer, private_loader

    def _rearm(self, kept: KeptWrapping, loader: DataLoader[Any], generator: torch.Generator | None,
               ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
        """What ``make_private`` would set for this owner, on the kept wrapping (see its source in Opacus 1.6).

        The model is wrapped already (its per-sample hooks, grad accumulation forbidden); the
        loader is Opacus' Poisson loader over this owner's rows and seed; the optimizer gets this
        owner's noise, clipping bound, expected batch size, generator and a fresh accountant holding
        the owner's history, and forgets any skipped step of the owner before.
        """
        from opacus.accountants import create_accountant
        from opacus.data_loader import DPDataLoader

        plan = self.state.plan
        assert plan is not None and kept.private_model is not None
        private_loader = DPDataLoader.from_data_loader(loader, generator=None, distributed=False)
        sample_rate = 1 / len(private_loader)
        optimizer = kept.private_optimizer
        optimizer.noise_multiplier = plan.noise_multiplier
        optimizer.max_grad_norm = plan.max_grad_norm
        optimizer.expected_batch_size = int(len(private_loader.dataset) * sample_rate)
        optimizer.generator = generator
        optimizer._step_skip_queue = []
        optimizer._is_last_step_skipped = False  # so the first zero_grad of training clears every gradient
        optimizer.original_optimizer.state.clear()
        accountant = create_accountant(mechanism=ACCOUNTANT)
        accountant.history = list(self.state.history)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        self._accountant = accountant
        return kept.private_model, optimizer, private_loader

    def finish(self) -> dict[str, float]:
        """Check Opacus accounted exactly the reserved steps; return the cumulative privacy metrics."""
        plan = self.state.plan
        assert plan is not None and self._accountant is not None
        done = sum(int(s) for _, _, s in self._accountant.history) - self._reserved_from
        if done != plan.steps_per_round:
            raise RuntimeError(
                f"owner {self.owner}: Opacus accounted {done} steps, the plan reserved {plan.steps_per_round}"
            )
        epsilon = self.state.epsilon(plan.delta)
        self._accountant = None
        return {
            "epsilon": epsilon,
            "budget-epsilon": plan.budget_epsilon,
            "delta": plan.delta,
            "noise-multiplier": plan.noise_multiplier,
            "sample-rate": plan.sample_rate,
            "steps": float(self.state.steps),
            "max-grad-norm": plan.max_grad_norm,
        }
