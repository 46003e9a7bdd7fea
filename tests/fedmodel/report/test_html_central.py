"""The report page's client-level (central DP) privacy table."""

from __future__ import annotations

from fedmodel.config import RunConfig
from fedmodel.privacy.central import new_state, summary
from fedmodel.report.html import render_html


def test_client_level_epsilon_delta_and_accountant_are_shown() -> None:
    state = new_state(RunConfig(clients=4, central_dp="fixed", central_noise=1.5, central_clip=2.0))
    state["releases"] = [{"round": r, "owners": 4, "clip": 2.0, "noise_std": 0.75, "noise_multiplier": 1.5}
                         for r in (1, 2)]
    client_level = summary(state, 1e-5)
    assert client_level is not None
    page = render_html({"privacy": {"mode": "dp-sgd", "client_level": client_level}}, {})
    table = page[page.index('id="privacy-client-level"'):]
    assert f"{client_level['epsilon']:.3f}" in table and "1e-05" in table
    assert "no amplification" in table and "DifferentialPrivacyClientSideFixedClipping" in table
    assert "2 (2)" in table  # rounds released (charged)


def test_no_client_level_table_without_central_dp() -> None:
    page = render_html({"privacy": {"mode": "dp-sgd", "client_level": None}}, {})
    assert "privacy-client-level" not in page
