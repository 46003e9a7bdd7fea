"""One data owner's local work in a round, independent of Flower: train privately, or evaluate.

The ClientApp unpacks a message, calls these functions and packs the reply; in simulation and in
deployment the same code runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from fedmodel.config import RunConfig
from fedmodel.data import Dataset
from fedmodel.data.augment import parse_augment
from fedmodel.errors import DataValidationError, FedModelError, PrivacyBudgetExceeded
from fedmodel.faults import apply_fault, fault_for
from fedmodel.models import model_to_load
from fedmodel.privacy import NoPrivacy, OpacusDPSGD, OwnerPrivacyState, PrivacyMechanism, plan_for_owner
from fedmodel.privacy.mechanism import KeptWrapping
from fedmodel.privacy.randomness import owner_seed, plain_seed
from fedmodel.privacy.release import EVALUATION_LOSS_CLIP, EvaluationSums
from fedmodel.training import evaluate, evaluation_sums, make_loader, train_epochs


@dataclass(frozen=True)
class OwnerUpdate:
    """What an owner sends back after training: new weights and scalar metrics (no raw data)."""

    weights: dict[str, torch.Tensor]
    metrics: dict[str, float]


def train_owner_round(
    config: RunConfig, owner: int, shard: Dataset, global_weights: Mapping[str, torch.Tensor], *,
    privacy: OwnerPrivacyState | None, server_round: int, proximal_mu: float, device: torch.device,
    simulated: bool = True,
) -> OwnerUpdate:
    """Train the global model on the owner's shard for ``config.local_epochs`` epochs.

    With DP (``privacy`` given) the noise multiplier is calibrated once, on the first round, for
    every step of every planned round, and ``privacy`` accumulates the steps really taken.
    A simulated owner's round is reproducible from (``config.seed``, ``owner``, ``server_round``);
    a deployed owner's (``simulated`` False) draws its noise and Poisson sampling from the OS CSPRNG
    and every other draw from fresh OS seeds (:mod:`fedmodel.privacy.randomness`).
    """
    if owner in config.inject_failure_owners:
        raise FedModelError(f"owner {owner}: injected failure (testing aid: inject-failure-owners)")
    fault = fault_for(config.inject_faults, owner)
    if fault is not None and fault.kind != "no-noise":  # testing aid: train honestly, then corrupt the update
        honest = train_owner_round(
            replace(config, inject_faults=()), owner, shard, global_weights, privacy=privacy,
            server_round=server_round, proximal_mu=proximal_mu, device=device, simulated=simulated,
        )
        return OwnerUpdate(apply_fault(fault, honest.weights, global_weights), honest.metrics)
    if len(shard) == 0:
        raise DataValidationError(f"owner {owner}: the shard holds no training examples")
    with _bench(config, shard, device, private=privacy is not None) as bench:
        model, optimizer = bench.kept.model, bench.kept.optimizer
        model.load_state_dict(global_weights)
        anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
        seed = owner_seed(config.seed, owner, server_round, simulated=simulated)  # None at a deployed node
        loader = make_loader(shard, config.batch_size, seed=plain_seed(seed))

        mechanism: PrivacyMechanism
        if privacy is None:
            mechanism = NoPrivacy()
        else:
            if privacy.plan is None:
                try:
                    privacy.plan = plan_for_owner(
                        num_examples=len(shard), batch_size=config.batch_size, local_epochs=config.local_epochs,
                        rounds=config.rounds, epsilon=config.epsilon, delta=config.delta,
                        max_grad_norm=config.max_grad_norm, spent_before=tuple(privacy.other),
                    )
                except PrivacyBudgetExceeded as exc:  # the scaling statistics alone used the budget
                    raise PrivacyBudgetExceeded(owner, exc.spent, exc.planned, exc.budget) from None
            mechanism = OpacusDPSGD(privacy, owner, noise_seed=seed, kept=bench.kept)
        train_model, train_optimizer, train_loader = mechanism.wrap(model, optimizer, loader)
        if fault is not None and privacy is not None:  # testing aid (no-noise): a DP bug for the audit to catch
            train_optimizer.noise_multiplier = 0.0  # type: ignore[attr-defined]  # the plan's sigma is still reported
        loss = train_epochs(
            train_model, train_optimizer, train_loader, epochs=config.local_epochs, device=device,
            proximal_mu=proximal_mu, anchor=anchor, lr=config.lr,
            augment=parse_augment(config.augment), augment_seed=plain_seed(seed, 1), background=float(shard.x.min()),
        )
        metrics: dict[str, float] = {"num-examples": float(len(shard)), "train-loss": loss}
        metrics.update(mechanism.finish())
        # copies: the bench's next owner overwrites these parameters in place
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return OwnerUpdate(weights, metrics)


@dataclass
class _Bench:
    """A model and its optimizer (``kept.model``, ``kept.optimizer``, with Opacus' wrapping of them once a DP
    owner trained) that owner after owner train in this process, each loading its weights first."""

    kept: KeptWrapping
    busy: bool = False


_BENCHES: dict[tuple[str, int, int, str, float, bool], _Bench] = {}


@contextmanager
def _bench(config: RunConfig, shard: Dataset, device: torch.device, *, private: bool) -> Iterator[_Bench]:
    """This process's bench for the model, shape, device, learning rate and DP or not (built the first time).

    DP or not is part of the key: Opacus' per-sample hooks stay on a model it wrapped.
    A simulated node hosting a cohort trains hundreds of owners one after another: building a
    model, an optimizer and Opacus' wrapping for each costs more than its training. A training that
    raises drops the bench (Opacus may hold a half-done step); a bench in use (a re-entrant call)
    is not shared: the caller gets one of its own.
    """
    key = (config.model, shard.num_features, shard.num_classes, str(device), config.lr, private)
    bench = _BENCHES.get(key)
    if bench is None or bench.busy:
        model = model_to_load(config.model, shard.num_features, shard.num_classes).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
        fresh = _Bench(KeptWrapping(model, optimizer))
        if bench is None:
            _BENCHES[key] = fresh
        bench = fresh
    bench.busy = True
    try:
        yield bench
    except BaseException:
        if _BENCHES.get(key) is bench:
            del _BENCHES[key]
        raise
    finally:
        bench.busy = False


def evaluate_owner(
    config: RunConfig, shard: Dataset, global_weights: Mapping[str, torch.Tensor], *, device: torch.device,
) -> dict[str, float]:
    """Exact metrics of the global model on the owner's own shard (simulation, or a node with --evaluation exact)."""
    metrics = evaluate(_evaluated_model(config, shard, global_weights, device), shard, device=device)
    return {"num-examples": float(len(shard)), **metrics}


def evaluate_owner_sums(
    config: RunConfig, shard: Dataset, global_weights: Mapping[str, torch.Tensor], *, device: torch.device,
    loss_clip: float = EVALUATION_LOSS_CLIP,
) -> EvaluationSums:
    """The exact sums of the global model on the owner's shard that a DP evaluation release noises (never sent)."""
    return evaluation_sums(_evaluated_model(config, shard, global_weights, device), shard, device=device,
                           loss_clip=loss_clip)


def _evaluated_model(config: RunConfig, shard: Dataset, global_weights: Mapping[str, torch.Tensor],
                     device: torch.device) -> torch.nn.Module:
    model = model_to_load(config.model, shard.num_features, shard.num_classes)
    model.load_state_dict(global_weights)
    return model.to(device)
