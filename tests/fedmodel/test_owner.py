"""One owner's round: a process training owner after owner on one kept model computes what a fresh one would."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmodel import owner as owner_module
from fedmodel.config import RunConfig
from fedmodel.data import Dataset
from fedmodel.models import build_model
from fedmodel.owner import OwnerUpdate, train_owner_round
from fedmodel.privacy import OwnerPrivacyState, epsilon_spent

FEATURES, CLASSES = 6, 3
SIZES = {0: 2, 1: 40, 2: 1, 3: 90, 4: 7}  # q = 1 and q < 1 (Poisson batches, some of them empty)


def shard(owner: int) -> Dataset:
    rng = np.random.default_rng(owner)
    n = SIZES[owner]
    return Dataset("t", rng.normal(size=(n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n),
                   tuple("abc"), tuple(f"f{i}" for i in range(FEATURES)))


def run(config: RunConfig, *, fresh: bool, proximal_mu: float = 0.0) -> dict[int, OwnerUpdate]:
    """Rounds 1-2 of owners 0..4, one after another; ``fresh`` drops the kept benches before every owner."""
    weights = build_model(config.model, FEATURES, CLASSES, seed=3).state_dict()
    states = {o: OwnerPrivacyState() for o in SIZES} if config.dp else {}
    out: dict[int, OwnerUpdate] = {}
    owner_module._BENCHES.clear()
    for server_round in (1, 2):
        for o in SIZES:
            if fresh:
                owner_module._BENCHES.clear()
            out[o] = train_owner_round(config, o, shard(o), weights, privacy=states.get(o), server_round=server_round,
                                       proximal_mu=proximal_mu, device=torch.device("cpu"))
    return out


@pytest.mark.parametrize(("dp", "model", "mu"), [(True, "mlp", 0.0), (True, "logreg", 0.5), (False, "mlp", 0.0)])
def test_a_kept_model_and_wrapping_compute_what_fresh_ones_do_bit_for_bit(dp: bool, model: str, mu: float) -> None:
    config = RunConfig(clients=5, rounds=2, dp=dp, model=model, batch_size=8, lr=0.5, epsilon=2.0)
    kept, fresh = run(config, fresh=False, proximal_mu=mu), run(config, fresh=True, proximal_mu=mu)
    for o in SIZES:
        assert kept[o].metrics == fresh[o].metrics  # loss, epsilon, steps, noise multiplier
        for name, value in fresh[o].weights.items():
            assert torch.equal(kept[o].weights[name], value), (o, name)
    if dp:  # each owner charged by its own accountant: epsilon from its own steps, checked by Opacus' analysis
        for o in SIZES:
            m = kept[o].metrics
            assert m["epsilon"] == pytest.approx(epsilon_spent([(m["noise-multiplier"], m["sample-rate"],
                                                                 int(m["steps"]))], config.delta), rel=1e-12)
        assert len({kept[o].metrics["sample-rate"] for o in SIZES}) > 1  # owners with different schedules
    assert len({kept[o].weights["0.weight"].sum().item() for o in SIZES}) == len(SIZES)  # owners' own updates


def test_updates_are_copies_the_next_owner_does_not_overwrite() -> None:
    config = RunConfig(clients=5, rounds=2, dp=True, model="logreg", batch_size=8)
    weights = build_model("logreg", FEATURES, CLASSES, seed=3).state_dict()
    first = train_owner_round(config, 0, shard(0), weights, privacy=OwnerPrivacyState(), server_round=1,
                              proximal_mu=0.0, device=torch.device("cpu"))
    kept = {k: v.clone() for k, v in first.weights.items()}
    train_owner_round(config, 1, shard(1), weights, privacy=OwnerPrivacyState(), server_round=1, proximal_mu=0.0,
                      device=torch.device("cpu"))
    assert all(torch.equal(first.weights[k], v) for k, v in kept.items())


def test_a_failed_training_drops_the_bench_and_the_next_owner_is_unaffected(monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(clients=5, rounds=2, dp=True, model="mlp", batch_size=8)
    weights = build_model("mlp", FEATURES, CLASSES, seed=3).state_dict()
    owner_module._BENCHES.clear()
    train_owner_round(config, 0, shard(0), weights, privacy=OwnerPrivacyState(), server_round=1, proximal_mu=0.0,
                      device=torch.device("cpu"))
    (bench,) = owner_module._BENCHES.values()
    real = owner_module.train_epochs

    def half_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *args: object, **kwargs: object) -> float:
        optimizer.zero_grad()
        x = torch.zeros(3, FEATURES)
        torch.nn.functional.cross_entropy(model(x), torch.zeros(3, dtype=torch.long)).backward()  # no step
        raise RuntimeError("the machine ran out of memory")

    monkeypatch.setattr(owner_module, "train_epochs", half_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_owner_round(config, 1, shard(1), weights, privacy=OwnerPrivacyState(), server_round=1, proximal_mu=0.0,
                          device=torch.device("cpu"))
    assert bench not in owner_module._BENCHES.values()  # its per-sample gradients are half-done: dropped
    monkeypatch.setattr(owner_module, "train_epochs", real)
    after = train_owner_round(config, 2, shard(2), weights, privacy=OwnerPrivacyState(), server_round=1,
                              proximal_mu=0.0, device=torch.device("cpu"))
    owner_module._BENCHES.clear()
    alone = train_owner_round(config, 2, shard(2), weights, privacy=OwnerPrivacyState(), server_round=1,
                              proximal_mu=0.0, device=torch.device("cpu"))
    assert after.metrics == alone.metrics
    assert all(torch.equal(after.weights[k], v) for k, v in alone.weights.items())
