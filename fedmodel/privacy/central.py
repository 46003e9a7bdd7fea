"""Central (client-level) DP: the noise a release carries and the epsilon of a run's releases.

With ``central-dp`` every owner clips its whole model update to an L2 norm C before it leaves
(Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod``), and the coordinator adds Gaussian noise
to the equal-weight mean of the n updates it averages: std ``z * C / n``, i.e. ``z * C`` on their sum
(Flower's ``DifferentialPrivacyClientSide*Clipping`` wrappers; :mod:`fedmodel.server.central_dp`).

Accounting (the client-level epsilon):

* Each round that changes the global model is one Gaussian mechanism on the sum of clipped
  updates, sensitivity C when one owner's whole update is added or removed (or replaced by a zero
  update), noise multiplier z. fedmodel asks *every* connected owner each round (no random
  sampling of owners), so **no amplification by sampling** applies: a release costs what the
  Gaussian mechanism costs, composed over rounds with RDP (the orders and conversion of Opacus'
  RDP accountant, :func:`fedmodel.privacy.accounting.epsilon_spent` with sample rate 1).
* The noise is calibrated to the number of updates actually averaged, so a round with dropouts
  still has noise multiplier z on its sum; it is charged like any other round.
* Adaptive clipping (Andrew et al. 2021) also releases a noisy count of clipped updates, noise std
  ``sigma_b``. Flower splits the requested z as the paper does: the update's noise multiplier is
  ``z_update = (z^-2 - (2 sigma_b)^-2)^-1/2``. The paper's split assumes a centred count
  (sensitivity 1/2); Flower counts 0/1 bits (sensitivity 1), so fedmodel charges each round as the
  composition of both Gaussians at their true sensitivity: ``z_eff = (z_update^-2 + sigma_b^-2)^-1/2``,
  which is smaller than z (a larger, never smaller, epsilon than the paper's formula would give).

The guarantee is for what the coordinator releases (every global model, the metrics of them).
The coordinator itself sees each owner's clipped update unless secure aggregation hides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedmodel.config import RunConfig
from fedmodel.privacy.accounting import ACCOUNTANT, epsilon_spent

CENTRAL_ACCOUNTANT = f"{ACCOUNTANT} (Gaussian mechanism composed over rounds, no amplification by sampling)"
MECHANISMS = {
    "fixed": "client-side fixed clipping (Flower DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod)",
    "adaptive": ("client-side adaptive clipping (Flower DifferentialPrivacyClientSideAdaptiveClipping + "
                 "adaptiveclipping_mod, Andrew et al. 2021)"),
}
LEVEL = ("client-level: one owner's whole update each round (all its rows), add or remove one owner; "
         "covers the released global models, not what the coordinator sees")


def count_stddev(config: RunConfig) -> float:
    """The noise std of adaptive clipping's clipped-update count: ``central-count-stddev`` or clients / 20."""
    return config.central_count_stddev or config.clients / 20


def update_noise_multiplier(noise_multiplier: float, stddev: float) -> float:
    """The noise multiplier of the update under adaptive clipping: Flower's (and the paper's) split of z."""
    if noise_multiplier >= 2 * stddev:
        raise ValueError(f"adaptive clipping needs noise multiplier {noise_multiplier:g} < 2 x count stddev {stddev:g}")
    return (noise_multiplier ** -2 - (2 * stddev) ** -2) ** -0.5


def accounted_noise_multiplier(config: RunConfig) -> float:
    """The noise multiplier each release is charged with: z (fixed), z_eff of both Gaussians (adaptive)."""
    if config.central_dp == "adaptive":
        stddev = count_stddev(config)
        z_update = update_noise_multiplier(config.central_noise, stddev)
        return (z_update ** -2 + stddev ** -2) ** -0.5
    return config.central_noise


def client_level_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` of Gaussian releases with these noise multipliers, no amplification (RDP)."""
    return epsilon_spent([(float(z), 1.0, 1) for z in noise_multipliers], delta)


def new_state(config: RunConfig) -> dict[str, Any]:
    """The record of a run's central DP, JSON-compatible (kept by the recorder, checkpointed with it)."""
    state: dict[str, Any] = {
        "mode": config.central_dp, "noise_multiplier": config.central_noise,
        "accounted_noise_multiplier": accounted_noise_multiplier(config), "clip": config.central_clip,
        "clip_now": config.central_clip, "releases": [], "charged_on_resume": [],
    }
    if config.central_dp == "adaptive":
        stddev = count_stddev(config)
        state.update({"count_stddev": stddev, "update_noise_multiplier": update_noise_multiplier(
            config.central_noise, stddev), "target_quantile": config.central_target_quantile,
            "clip_lr": config.central_clip_lr})
    return state


def summary(state: dict[str, Any] | None, delta: float) -> dict[str, Any] | None:
    """``privacy.client_level`` of report.json: epsilon, delta, accountant, noise, clipping, rounds."""
    if state is None:
        return None
    charged = [r["noise_multiplier"] for r in state["releases"]] + [
        r["noise_multiplier"] for r in state["charged_on_resume"]]
    out = {
        "mechanism": MECHANISMS[state["mode"]], "level": LEVEL,
        "epsilon": client_level_epsilon(charged, delta) if charged else 0.0, "delta": delta,
        "accountant": CENTRAL_ACCOUNTANT, "noise_multiplier": state["noise_multiplier"],
        "accounted_noise_multiplier": state["accounted_noise_multiplier"], "clip": state["clip"],
        "rounds": len(state["releases"]), "releases_charged": len(charged), "releases": state["releases"],
    }
    if state["mode"] == "adaptive":
        out.update({k: state[k] for k in ("count_stddev", "update_noise_multiplier", "target_quantile", "clip_lr")})
        out["clip_final"] = state["clip_now"]
    if state["charged_on_resume"]:
        out["charged_on_resume"] = state["charged_on_resume"]
    return out

