"""Privacy accounting against an independent oracle: Opacus' RDP analysis functions, and PRV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedmodel.config import RunConfig
from fedmodel.data import Dataset
from fedmodel.errors import PrivacyBudgetExceeded
from fedmodel.models import build_model
from fedmodel.owner import train_owner_round
from fedmodel.privacy import OwnerPrivacyState, epsilon_spent, plan_for_owner

ORDERS = RDPAccountant.DEFAULT_ALPHAS
CPU = torch.device("cpu")


def oracle_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon recomputed from the four reported numbers with Opacus' pure analysis functions."""
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=ORDERS)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def shard(n: int, seed: int = 0, features: int = 8, classes: int = 3) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int64)
    return Dataset("synthetic", x, y, tuple(map(str, range(classes))), tuple(f"f{i}" for i in range(features)))


def run_rounds(config: RunConfig, data: Dataset, rounds: int, state: OwnerPrivacyState) -> list[dict[str, float]]:
    weights = build_model(config.model, data.num_features, data.num_classes).state_dict()
    out = []
    for r in range(1, rounds + 1):
        update = train_owner_round(config, 0, data, weights, privacy=state, server_round=r, proximal_mu=0.0,
                                   device=CPU)
        weights = update.weights
        out.append(update.metrics)
    return out


@pytest.mark.parametrize(("n", "batch", "epochs", "rounds", "budget"), [
    (120, 32, 1, 3, 3.0),
    (57, 8, 2, 4, 1.0),
    (300, 64, 1, 5, 8.0),
])
def test_reported_epsilon_matches_oracle_and_stays_within_budget(
    n: int, batch: int, epochs: int, rounds: int, budget: float
) -> None:
    config = RunConfig(model="logreg", batch_size=batch, local_epochs=epochs, rounds=rounds, epsilon=budget, lr=0.5)
    metrics = run_rounds(config, shard(n), rounds, OwnerPrivacyState())
    previous = 0.0
    for m in metrics:
        expected = oracle_epsilon(m["sample-rate"], m["noise-multiplier"], int(m["steps"]), m["delta"])
        assert m["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert m["epsilon"] <= budget
        assert m["epsilon"] > previous  # cumulative: never one round's share
        previous = m["epsilon"]
    last = metrics[-1]
    assert int(last["steps"]) == rounds * epochs * int(np.ceil(n / batch))
    assert last["sample-rate"] == pytest.approx(1 / np.ceil(n / batch))
    # the calibrated plan uses the budget well: within 2% below it at the last round
    assert last["epsilon"] >= 0.98 * budget


def test_prv_accountant_agrees_within_rdp_bound() -> None:
    """A second, independent accountant (PRV) gives a tighter, never larger, epsilon than the reported RDP one."""
    plan = plan_for_owner(num_examples=200, batch_size=20, local_epochs=1, rounds=10, epsilon=2.0, delta=1e-5,
                          max_grad_norm=1.0)
    history = [(plan.noise_multiplier, plan.sample_rate, plan.total_steps)]
    prv = PRVAccountant()
    prv.history = list(history)
    rdp_eps = epsilon_spent(history, 1e-5)
    assert float(prv.get_epsilon(delta=1e-5)) <= rdp_eps <= 2.0
    assert float(prv.get_epsilon(delta=1e-5)) >= 0.5 * rdp_eps


def test_twice_the_rounds_at_fixed_noise_spends_more() -> None:
    sigma, q = 1.2, 0.1
    one = epsilon_spent([(sigma, q, 50)], 1e-5)
    two = epsilon_spent([(sigma, q, 100)], 1e-5)
    assert two > one
    assert two == pytest.approx(oracle_epsilon(q, sigma, 100, 1e-5))


def test_round_past_the_plan_is_refused_when_it_would_exceed_the_budget() -> None:
    config = RunConfig(model="logreg", batch_size=16, rounds=2, epsilon=1.0, lr=0.5)
    data = shard(64)
    state = OwnerPrivacyState()
    metrics = run_rounds(config, data, 2, state)
    steps_before = state.steps
    weights = build_model("logreg", data.num_features, data.num_classes).state_dict()
    with pytest.raises(PrivacyBudgetExceeded, match="remaining"):
        train_owner_round(config, 0, data, weights, privacy=state, server_round=3, proximal_mu=0.0, device=CPU)
    assert state.steps == steps_before  # refused before training: nothing reserved, nothing spent
    assert metrics[-1]["epsilon"] <= 1.0


def test_empty_poisson_batches_are_steps_not_skipped() -> None:
    """Three examples, batch size 1: about 30% of Poisson batches are empty, and every one is a step."""
    config = RunConfig(model="logreg", batch_size=1, local_epochs=10, rounds=1, epsilon=5.0, lr=0.1)
    metrics = run_rounds(config, shard(3), 1, OwnerPrivacyState())
    assert int(metrics[0]["steps"]) == 30
    assert metrics[0]["epsilon"] == pytest.approx(oracle_epsilon(1 / 3, metrics[0]["noise-multiplier"], 30, 1e-5))


def test_state_round_trips_through_its_dict_form() -> None:
    config = RunConfig(model="logreg", batch_size=16, rounds=3, epsilon=2.0)
    state = OwnerPrivacyState()
    run_rounds(config, shard(50), 2, state)
    restored = OwnerPrivacyState.from_dict(state.to_dict())
    assert restored.history == state.history
    assert restored.plan == state.plan
    assert epsilon_spent(restored.history, 1e-5) == epsilon_spent(state.history, 1e-5)


def test_no_dp_reports_no_epsilon() -> None:
    config = RunConfig(model="logreg", dp=False, rounds=1)
    data = shard(40)
    weights = build_model("logreg", data.num_features, data.num_classes).state_dict()
    update = train_owner_round(config, 0, data, weights, privacy=None, server_round=1, proximal_mu=0.0, device=CPU)
    assert "epsilon" not in update.metrics
    assert "noise-multiplier" not in update.metrics
    assert update.metrics["num-examples"] == 40


def test_calibration_is_shared_by_owners_with_the_same_schedule_and_stays_within_budget() -> None:
    from fedmodel.privacy.accounting import calibrate_noise

    calibrate_noise.cache_clear()
    a = plan_for_owner(num_examples=144, batch_size=32, local_epochs=1, rounds=10, epsilon=3.0, delta=1e-5,
                       max_grad_norm=1.0)
    b = plan_for_owner(num_examples=143, batch_size=32, local_epochs=1, rounds=10, epsilon=3.0, delta=1e-5,
                       max_grad_norm=1.0)
    assert a.noise_multiplier == b.noise_multiplier
    assert calibrate_noise.cache_info().hits == 1  # 143 and 144 rows give the same sample rate and steps
    assert oracle_epsilon(a.sample_rate, a.noise_multiplier, a.total_steps, 1e-5) <= 3.0


def oracle_composed(entries: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of several (sigma, q, steps) releases composed, from Opacus' analysis functions."""
    rdp = sum(np.asarray(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=ORDERS)) for s, q, n in entries)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


@pytest.mark.parametrize("stats_sigma", [3.0, 5.0, 20.0])
def test_scaling_statistics_are_charged_and_dp_sgd_is_calibrated_for_the_rest(stats_sigma: float) -> None:
    config = RunConfig(epsilon=3.0, delta=1e-5, batch_size=16, rounds=3)
    data = shard(64)
    state = OwnerPrivacyState()
    state.charge_gaussian(stats_sigma)
    rows = run_rounds(config, data, 3, state)
    plan = state.plan
    assert plan is not None
    everything = [(stats_sigma, 1.0, 1), (plan.noise_multiplier, plan.sample_rate, plan.total_steps)]
    truth = oracle_composed(everything, 1e-5)
    assert rows[-1]["epsilon"] == pytest.approx(truth, rel=1e-9)
    assert 3.0 - 0.02 <= truth <= 3.0  # the whole budget is used, never passed
    alone = plan_for_owner(num_examples=64, batch_size=16, local_epochs=1, rounds=3, epsilon=3.0, delta=1e-5,
                           max_grad_norm=1.0)
    assert plan.noise_multiplier > alone.noise_multiplier  # the statistics cost DP-SGD some noise
    assert state.steps == plan.total_steps  # the statistics are not DP-SGD steps


def test_statistics_that_use_the_whole_budget_refuse_training() -> None:
    config = RunConfig(epsilon=0.5, delta=1e-5, batch_size=16, rounds=2)
    state = OwnerPrivacyState()
    state.charge_gaussian(1.0)  # epsilon of one release alone is about 5
    with pytest.raises(PrivacyBudgetExceeded, match="owner 0"):
        run_rounds(config, shard(32), 1, state)
    assert state.plan is None and state.steps == 0


def test_other_releases_round_trip_through_the_dict_form() -> None:
    state = OwnerPrivacyState()
    state.charge_gaussian(4.0)
    state.record(1.1, 0.25, 8)
    again = OwnerPrivacyState.from_dict(state.to_dict())
    assert again.other == [(4.0, 1.0, 1)] and again.history == [(1.1, 0.25, 8)]
    assert again.epsilon(1e-5) == pytest.approx(oracle_composed([(4.0, 1.0, 1), (1.1, 0.25, 8)], 1e-5))


@pytest.mark.parametrize("history", [
    [(2.41, 0.2, 50)],
    [(5.0, 1.0, 1), (2.5, 0.2, 50)],
    [(1.1, 0.01, 1000), (0.9, 0.5, 7), (1.1, 0.01, 3)],
    [(0.8, 0.05, 300)],
])
def test_cached_curves_give_opacus_accountants_epsilon_exactly(history: list[tuple[float, float, int]]) -> None:
    accountant = RDPAccountant()
    accountant.history = list(history)
    for delta in (1e-5, 1e-7):
        assert epsilon_spent(history, delta) == accountant.get_epsilon(delta=delta)
