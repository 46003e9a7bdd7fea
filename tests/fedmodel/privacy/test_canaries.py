"""The audit's statistics against independent oracles, its canaries, and the no-noise fault."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.faults import Fault
from fedmodel.models import build_model
from fedmodel.owner import train_owner_round
from fedmodel.privacy import OwnerPrivacyState
from fedmodel.privacy.canaries import (
    audit_report,
    audit_scores,
    epsilon_lower_bound,
    guess_pairs,
    make_canaries,
    p_value,
    shard_with_canaries,
)


def _binomial_tail(r: int, v: int, q: float) -> float:
    """P[Binomial(r, q) >= v] summed term by term (an oracle independent of scipy)."""
    return sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1))


@pytest.mark.parametrize(("r", "v"), [(20, 20), (100, 90), (200, 150), (60, 59), (500, 300)])
def test_pure_dp_bound_is_where_the_binomial_tail_reaches_beta(r: int, v: int) -> None:
    bound = epsilon_lower_bound(1000, r, v, delta=0.0, beta=0.05)
    assert bound > 0
    q = 1 / (1 + math.exp(-bound))
    assert _binomial_tail(r, v, q) == pytest.approx(0.05, rel=1e-3)
    assert _binomial_tail(r, v, 1 / (1 + math.exp(-(bound + 0.01)))) > 0.05


@pytest.mark.parametrize(("m", "r", "v", "epsilon"), [(100, 100, 70, 0.5), (1000, 200, 190, 2.0), (50, 20, 3, 0.1),
                                                   (500, 500, 500, 6.0), (10, 0, 0, 1.0)])
def test_pure_dp_p_value_is_scipys_binomial_tail(m: int, r: int, v: int, epsilon: float) -> None:
    q = 1 / (1 + math.exp(-epsilon))
    assert p_value(m, r, v, epsilon, 0.0) == pytest.approx(min(float(stats.binom.sf(v - 1, r, q)), 1.0), rel=1e-9)


@pytest.mark.parametrize("r", [10, 50, 100, 400])
def test_all_guesses_right_has_a_closed_form(r: int) -> None:
    """v = r: P[Binomial(r, q) = r] = q^r = beta, so eps = logit(beta^(1/r))."""
    q = 0.05 ** (1 / r)
    assert epsilon_lower_bound(r, r, r, delta=0.0, beta=0.05) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_chance_level_guesses_give_no_bound() -> None:
    assert epsilon_lower_bound(200, 200, 100, delta=1e-5, beta=0.05) == 0.0
    assert epsilon_lower_bound(200, 20, 11, delta=0.0, beta=0.05) == 0.0


def test_delta_only_weakens_the_bound() -> None:
    for r, v in [(100, 95), (200, 180), (40, 40)]:
        pure = epsilon_lower_bound(200, r, v, delta=0.0, beta=0.05)
        approx = epsilon_lower_bound(200, r, v, delta=1e-5, beta=0.05)
        loose = epsilon_lower_bound(200, r, v, delta=1e-3, beta=0.05)
        assert loose <= approx <= pure
        assert p_value(200, r, v, 1.0, 1e-3) >= p_value(200, r, v, 1.0, 0.0)


@pytest.mark.parametrize(("epsilon", "delta"), [(1.0, 0.01), (2.0, 0.002), (0.5, 0.02)])
def test_approximate_dp_p_value_is_valid_for_a_worst_case_mechanism(epsilon: float, delta: float) -> None:
    """Monte Carlo: an (eps, delta)-DP mechanism (reveal S_i with prob. delta, else eps-randomised response).

    Its guesser is right on each canary with probability delta + (1 - delta) e^eps / (1 + e^eps);
    the paper's p-value must bound the chance of v or more right guesses, for every v.
    """
    m = 100
    rng = np.random.default_rng(7)
    right = delta + (1 - delta) / (1 + math.exp(-epsilon))
    counts = rng.binomial(m, right, size=200_000)
    for v in range(m // 2, m + 1, 5):
        observed = float(np.mean(counts >= v))
        assert observed <= p_value(m, m, v, epsilon, delta) + 3 * math.sqrt(observed / 200_000) + 1e-6


def test_p_value_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(10, 20, 5, 1.0, 0.0)


def test_bonferroni_levels_and_perfect_scores() -> None:
    included = np.array([True, False] * 100)
    scores = np.where(included, 1.0, -1.0) + np.linspace(0, 0.1, 200)
    result = audit_scores(scores, included, delta=0.0)
    ks = [10, 20, 40, 60, 100]
    assert guess_pairs(200) == [(k, k) for k in ks] + [(k, 0) for k in ks]
    assert (result.guesses, result.correct, result.pairs_tried) == (200, 200, 10)
    q = (0.05 / 10) ** (1 / 200)
    assert result.lower_bound == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_scores_unrelated_to_the_secret_give_no_bound() -> None:
    rng = np.random.default_rng(3)
    assert audit_scores(rng.standard_normal(200), rng.random(200) < 0.5, delta=1e-5).lower_bound == 0.0
    with pytest.raises(ValueError, match="finite"):
        audit_scores(np.array([0.0, math.nan]), np.array([True, False]), delta=0.0)


def test_canaries_lie_where_the_data_is_quiet_one_label_each() -> None:
    rng = np.random.default_rng(0)
    reference = np.c_[rng.standard_normal((300, 6)), np.zeros((300, 2))]  # two features always 0
    canaries = make_canaries(seed=1, count=20, reference=reference, num_classes=10, owners=(0, 1))
    assert np.abs(reference @ canaries.x.T).max() < 1e-9  # the real rows do not touch the canary inputs
    assert len({(tuple(x), y) for x, y in zip(canaries.x.round(6), canaries.y, strict=True)}) == 20
    assert list(canaries.owner[:4]) == [0, 1, 0, 1]
    again = make_canaries(seed=1, count=20, reference=reference, num_classes=10, owners=(0, 1))
    assert np.array_equal(again.included, canaries.included) and np.array_equal(again.x, canaries.x)
    with pytest.raises(ValueError, match="at most features x classes"):
        make_canaries(seed=1, count=81, reference=reference, num_classes=10, owners=(0,))


def test_an_audited_owner_trains_and_accounts_for_its_included_canaries() -> None:
    config = RunConfig.from_mapping({"clients": 3, "audit": True, "audit-canaries": 60, "audit-owners": "1"})
    shard = federated_split(config).owner(1)
    audited = shard_with_canaries(config, 1, True, shard)
    assert len(audited) - len(shard) in range(10, 51)  # about half of 60
    assert shard_with_canaries(config, 0, True, federated_split(config).owner(0)).x.shape[0] == \
        len(federated_split(config).owner(0))
    with pytest.raises(FedModelError, match="simulation only"):
        shard_with_canaries(config, 1, False, shard)
    too_many = RunConfig.from_mapping({"dataset": "breast-cancer", "audit": True, "audit-canaries": 200})
    with pytest.raises(FedModelError, match="audit-canaries = 200"):
        shard_with_canaries(too_many, 0, True, federated_split(too_many).owner(0))


def test_audit_keys_are_validated() -> None:
    config = RunConfig.from_mapping({"audit": "true", "audit-owners": "0,2"})
    assert config.audit and config.audited_owners == (0, 2)
    assert RunConfig.from_mapping({"clients": 3}).audited_owners == (0, 1, 2)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"clients": 3, "audit-canaries": 1, "audit-owners": "5"})
    assert "audit-canaries = 1" in str(info.value) and "audit-owners = [5]" in str(info.value)


def test_no_noise_fault_trains_without_noise_and_claims_the_plan() -> None:
    assert str(Fault.parse("2:no-noise")) == "2:no-noise"
    config = RunConfig.from_mapping({"clients": 4, "rounds": 2, "epsilon": 1.0})
    shard = federated_split(config).owner(0)
    weights = build_model("logreg", shard.num_features, shard.num_classes).state_dict()

    def run(faults: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        update = train_owner_round(RunConfig.from_mapping({**config.to_mapping(), "inject-faults": faults}), 0,
                                   shard, weights, privacy=OwnerPrivacyState(), server_round=1, proximal_mu=0.0,
                                   device=torch.device("cpu"))
        return update.weights, update.metrics

    honest, honest_metrics = run("")
    broken, broken_metrics = run("0:no-noise")
    assert broken_metrics["epsilon"] == honest_metrics["epsilon"] > 0
    assert broken_metrics["noise-multiplier"] == honest_metrics["noise-multiplier"] > 0
    # Same sampling, no noise: the broken update is the honest one less its noise, far smaller a step.
    honest_step = sum(float((honest[k] - weights[k]).norm() ** 2) for k in weights)
    broken_step = sum(float((broken[k] - weights[k]).norm() ** 2) for k in weights)
    assert broken_step < honest_step / 4


def test_verdicts_and_the_summary_line() -> None:
    included = np.array([True, False] * 50)
    result = audit_scores(np.where(included, 1.0, -1.0), included, delta=1e-5)
    assert audit_report(result, proven_epsilon=1.0, dp=True, owners=[0])["verdict"].startswith("VIOLATION")
    assert audit_report(result, proven_epsilon=8.0, dp=True, owners=[0])["verdict"] == "consistent"
    assert audit_report(result, proven_epsilon=None, dp=False, owners=[0])["verdict"].startswith("no DP guarantee")
    line = importlib.import_module("fedmodel.cli.simulate").audit_line(
        audit_report(result, proven_epsilon=1.0, dp=True, owners=[0]))
    assert line.startswith(f"epsilon >= {result.lower_bound:.3f} (proven 1.000) at 95% confidence, 100 of 100")
    assert line.endswith("VIOLATION: lower bound above the proven epsilon")
