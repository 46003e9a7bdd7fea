"""Client-level epsilon of central DP against an independent accountant (Google's dp-accounting)."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedmodel.config import RunConfig
from fedmodel.privacy.central import (
    accounted_noise_multiplier,
    client_level_epsilon,
    new_state,
    summary,
    update_noise_multiplier,
)


def oracle(events: list[float], delta: float) -> float:
    """dp-accounting's RDP accountant: each release a Gaussian mechanism sampled with probability 1."""
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    for z in events:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(1.0, dp_accounting.GaussianDpEvent(z)))
    return float(accountant.get_epsilon(delta))


def agrees_or_larger(ours: float, theirs: float) -> bool:
    """Within 1% above the oracle, never below it (beyond float rounding: the same RDP curve summed differently)."""
    return theirs * (1 - 1e-12) <= ours <= theirs * 1.01


@pytest.mark.parametrize(("z", "rounds", "delta"), [(1.0, 2, 1e-5), (0.7, 10, 1e-5), (2.0, 50, 1e-6),
                                                    (5.0, 100, 1e-5), (0.5, 1, 1e-3)])
def test_fixed_clipping_epsilon_matches_dp_accounting(z: float, rounds: int, delta: float) -> None:
    config = RunConfig(clients=10, central_dp="fixed", central_noise=z, delta=delta)
    charged = [accounted_noise_multiplier(config)] * rounds
    assert accounted_noise_multiplier(config) == z
    assert agrees_or_larger(client_level_epsilon(charged, delta), oracle([z] * rounds, delta))


def test_releases_with_dropouts_are_charged_each_and_only_once() -> None:
    state = new_state(RunConfig(clients=5, central_dp="fixed", central_noise=1.2))
    state["releases"] = [{"round": r, "owners": n, "clip": 1.0, "noise_std": 1.2 / n, "noise_multiplier": 1.2}
                         for r, n in ((1, 5), (2, 3), (3, 5))]
    report = summary(state, 1e-5)
    assert report is not None and report["rounds"] == 3
    assert agrees_or_larger(report["epsilon"], oracle([1.2] * 3, 1e-5))


@pytest.mark.parametrize(("z", "clients", "stddev"), [(0.3, 10, 0.0), (0.8, 20, 0.0), (1.0, 4, 2.0)])
def test_adaptive_clipping_epsilon_composes_update_and_count(z: float, clients: int, stddev: float) -> None:
    """Each round is two Gaussians: the update (Flower's split of z) and the 0/1 clipped count (sensitivity 1)."""
    config = RunConfig(clients=clients, central_dp="adaptive", central_noise=z, central_count_stddev=stddev)
    sigma_b = stddev or clients / 20
    z_update = (z ** -2 - (2 * sigma_b) ** -2) ** -0.5
    assert update_noise_multiplier(z, sigma_b) == pytest.approx(z_update)
    rounds, delta = 5, 1e-5
    ours = client_level_epsilon([accounted_noise_multiplier(config)] * rounds, delta)
    assert agrees_or_larger(ours, oracle([z_update, sigma_b] * rounds, delta))
    assert ours > oracle([z] * rounds, delta)  # never smaller than the paper's formula (centred count) would say


def test_summary_names_epsilon_delta_accountant_noise_clip_rounds() -> None:
    config = RunConfig(clients=10, central_dp="adaptive", central_noise=0.5, central_clip=0.1)
    state = new_state(config)
    state["releases"].append({"round": 1, "owners": 10, "clip": 0.1, "noise_std": 0.01, "noise_multiplier":
                              state["accounted_noise_multiplier"]})
    state["charged_on_resume"].append({"round": 2, "noise_multiplier": state["accounted_noise_multiplier"],
                                       "reason": "resumed"})
    report = summary(state, 1e-5)
    assert report is not None
    assert {"epsilon", "delta", "accountant", "noise_multiplier", "clip", "rounds"} <= set(report)
    assert report["rounds"] == 1 and report["releases_charged"] == 2
    assert report["epsilon"] == pytest.approx(client_level_epsilon([state["accounted_noise_multiplier"]] * 2, 1e-5))
    assert "no amplification" in report["accountant"] and report["clip_final"] == 0.1
    assert summary(None, 1e-5) is None
