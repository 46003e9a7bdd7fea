"""Central (client-level) DP: Flower's client-side clipping wrappers around fedmodel's screened strategy.

``central-dp = fixed`` wraps the strategy in Flower's ``DifferentialPrivacyClientSideFixedClipping``,
``adaptive`` in ``DifferentialPrivacyClientSideAdaptiveClipping``. Their ``configure_train`` puts the
clipping norm into every train message, and each owner's ClientApp clips its update to it with
Flower's mod (:mod:`fedmodel.clients.central_dp`) before the update leaves, so the coordinator never holds an
unclipped update; the Opacus DP-SGD at each owner runs unchanged inside (both guarantees hold).

What fedmodel changes around the wrappers, and why:

* **Equal weights.** The noise ``z * C / n`` covers the mean of n clipped updates only if each
  weighs 1/n, so the train updates are averaged with equal weights (not by example count).
* **Noise for the updates actually averaged.** Flower's ``aggregate_train`` skips a whole round
  when any owner failed, and otherwise noises for ``num_sampled_clients`` even when fewer replied
  (only a warning). Here the round aggregates the valid replies (screened as in every run: an
  update farther than the clipping norm from the global model is rejected, so an owner that did not
  clip cannot enter) and the noise is calibrated to their number n: std ``z * C / n`` on their mean,
  ``z * C`` on their sum, whatever n is. Each such round is charged as one release
  (:mod:`fedmodel.privacy.central`); a round that aggregates nothing releases and charges nothing.
* **Noise from the OS's entropy.** Flower draws from NumPy's global generator; here each wrapper
  has its own ``numpy.random.Generator`` seeded from the OS, never from the run's seed (which is in
  report.json, so noise drawn from it could be subtracted).
* **Adaptive clipping as the paper has it.** Flower's mod flags an update that *was* clipped and
  its wrapper moves the norm by ``exp(-lr (clipped share - target))``, which drives the norm away
  from the target (all clipped: the norm shrinks further). fedmodel gives Flower's update the noisy
  share of *unclipped* updates instead (Andrew et al. 2021: the norm tracks the target quantile of
  update norms), and adds a round's noise with the norm the owners clipped to that round (Flower
  adds it after moving the norm).

The layers, outside in: :class:`CentralFixed` or :class:`CentralAdaptive` (Flower's wrapper, noise
and the record of releases) holds the :class:`~fedmodel.server.screening.ScreenedStrategy` (screening with
:func:`clipped_update_check`, recording), which holds :class:`EqualWeightFedAvg` or
:class:`EqualWeightFedProx` (the equal-weight mean).

A resumed run carries the releases in the recorder's checkpointed state and conservatively charges
one more release for the round that was in flight when the run stopped (it may have been released).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.screening import Reference, ReplyCheck, ScreenedStrategy
from fedmodel.server.validation import update_norm
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedProx,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, validate_message_reply_consistency
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT, compute_stdv

from fedmodel.config import RunConfig
from fedmodel.privacy import central

log = logging.getLogger("fedmodel.server")

_UNIT = "unit-weight"
CLIP_SLACK = 1e-3
"""Relative slack on the clipping norm when screening: float32 rounding of the clipped weights, not more."""


# ---------------------------------------------------------------------------------------------- the mean
def equal_mean(strategy: FedAvg, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """FedAvg's train aggregation with every valid update weighted equally (sensitivity C / n of the mean).

    The metrics are aggregated as ``strategy`` aggregates them (its ``train_metrics_aggr_fn``).
    """
    valid = [msg.content for msg in replies if not msg.has_error()]
    if not valid:
        return None, None
    validate_message_reply_consistency(valid, strategy.weighted_by_key, check_arrayrecord=True)
    key = strategy.arrayrecord_key
    unit = [RecordDict({key: content.array_records[key], _UNIT: MetricRecord({_UNIT: 1})}) for content in valid]
    return aggregate_arrayrecords(unit, _UNIT), strategy.train_metrics_aggr_fn(valid, strategy.weighted_by_key)


class EqualWeightFedAvg(FedAvg):
    """FedAvg averaging the valid updates with equal weights (not by example count), as central DP needs."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The equal-weight mean of the valid replies' arrays (:func:`equal_mean`)."""
        return equal_mean(self, replies)


class EqualWeightFedProx(FedProx):
    """FedProx (its proximal term is the owners') averaging the valid updates with equal weights."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The equal-weight mean of the valid replies' arrays (:func:`equal_mean`)."""
        return equal_mean(self, replies)


def inner_strategy(config: RunConfig, common: dict[str, Any]) -> FedAvg:
    """The strategy under the screening: fedavg or fedprox (the config refuses the rest with central DP)."""
    if config.strategy == "fedprox":
        return EqualWeightFedProx(proximal_mu=config.proximal_mu, **common)
    return EqualWeightFedAvg(**common)


# ---------------------------------------------------------------------------------------------- screening
def clipped_update_check(*, needs_norm_bit: bool) -> ReplyCheck:
    """The screening rule of central DP: an update must be clipped to the norm its round's train config named.

    With ``needs_norm_bit`` (adaptive clipping) it must also carry its clipped bit. A round whose
    config names no clipping norm is not checked.
    """

    def check(msg: Message, reference: Reference, round_config: ConfigRecord) -> str | None:
        if KEY_CLIPPING_NORM not in round_config:
            return None
        clip = float(round_config[KEY_CLIPPING_NORM])  # type: ignore[arg-type]  # the wrapper put a float there
        record = next(iter(msg.content.metric_records.values()))
        if needs_norm_bit and KEY_NORM_BIT not in record:
            return f"no {KEY_NORM_BIT!r} metric: the owner's ClientApp did not run adaptive clipping"
        update = next(iter(msg.content.array_records.values())).to_torch_state_dict()
        norm = update_norm(reference, update)
        if not norm <= _clip_tolerance(clip, reference):
            return (f"update norm {norm:.6g} is above the central-DP clipping norm {clip:.6g}: the "
                    "owner did not clip its update")
        return None

    return check


# ---------------------------------------------------------------------------------------------- the wrappers
def wrap(strategy: ScreenedStrategy, config: RunConfig, *,
         rng: np.random.Generator | None = None) -> CentralFixed | CentralAdaptive:
    """``strategy`` (screened with :func:`clipped_update_check`) inside the wrapper ``central-dp`` names."""
    if config.central_dp == "fixed":
        return CentralFixed(strategy, config=config, rng=rng)
    return CentralAdaptive(strategy, config=config, rng=rng)


class Releases:
    """The run's central-DP releases, kept by the recorder (checkpointed with it), and the noise each one gets.

    What both wrappers share; each holds one.
    """

    def __init__(self, recorder: RunRecorder, config: RunConfig) -> None:
        self.recorder = recorder
        self.config = config
        self._synced = False

    @property
    def state(self) -> dict[str, Any]:
        """The run's central-DP record, kept by the recorder (checkpointed with it)."""
        if self.recorder.central is None:
            self.recorder.central = central.new_state(self.config)
        return self.recorder.central

    def resumed_norm(self, server_round: int) -> float | None:
        """At a wrapper's first round: the norm the run had reached (None afterwards).

        A resumed run is charged one more release for the round that was in flight when it stopped.
        """
        if self._synced:
            return None
        self._synced = True
        state = self.state
        resumes = self.recorder.resumes
        in_flight = int(resumes[-1]["in_flight_round"]) if resumes else None
        charged = {int(r["round"]) for r in state["charged_on_resume"]}
        if in_flight == server_round and server_round not in charged:
            state["charged_on_resume"].append({
                "round": server_round, "noise_multiplier": state["accounted_noise_multiplier"],
                "reason": "the run stopped in this round and may have released it before; charged again",
            })
        return float(state["clip_now"])

    def release(self, server_round: int, aggregated: ArrayRecord, *, owners: int, noise_multiplier: float,
                clipping_norm: float, rng: np.random.Generator) -> ArrayRecord:
        """Gaussian noise ``z * C / n`` on the mean of ``owners`` clipped updates, from ``rng``; recorded."""
        std = compute_stdv(noise_multiplier, clipping_norm, owners)
        arrays = aggregated.to_numpy_ndarrays()
        for array in arrays:
            array += rng.normal(0.0, std, array.shape).astype(array.dtype)
        log.info("central DP: noise std %.6g on the mean of %d clipped updates (clip %.6g)", std, owners,
                 clipping_norm)
        noisy = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(aggregated.keys(), arrays, strict=True)})
        state = self.state
        state["releases"].append({
            "round": server_round, "owners": owners, "clip": clipping_norm, "noise_std": std,
            "noise_multiplier": state["accounted_noise_multiplier"],
        })
        return noisy


class CentralFixed(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping: each owner clips to ``central-clip``, noise ``z C / n`` on the mean.

    Parameters
    ----------
    strategy : ScreenedStrategy
        The screened strategy (its checks include :func:`clipped_update_check`).
    config : RunConfig
        The run's settings: ``central-noise``, ``central-clip``, ``clients``.
    rng : numpy.random.Generator or None
        The noise source; None: one seeded from the OS, never from the run's seed.
    """

    def __init__(self, strategy: ScreenedStrategy, *, config: RunConfig,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__(strategy, noise_multiplier=config.central_noise, clipping_norm=config.central_clip,
                         num_sampled_clients=config.clients)
        self.screened = strategy
        self.releases = Releases(strategy.recorder, config)
        self.rng = rng if rng is not None else np.random.default_rng()  # OS entropy, never the run's seed

    @property
    def recorder(self) -> RunRecorder:
        """The screened strategy's run recorder."""
        return self.screened.recorder

    @property
    def min_replies(self) -> int:
        """The fewest valid replies the screened strategy aggregates."""
        return self.screened.min_replies

    @property
    def state(self) -> dict[str, Any]:
        """The run's central-DP record (:attr:`Releases.state`)."""
        return self.releases.state

    def connected_nodes(self, grid: Grid, server_round: int, what: str | None = None) -> list[int]:
        """The nodes to sample (:meth:`ScreenedStrategy.connected_nodes`)."""
        return self.screened.connected_nodes(grid, server_round, what)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's: the clipping norm into the train config (after a resume, the norm the run had reached)."""
        norm = self.releases.resumed_norm(server_round)
        if norm is not None:
            self.clipping_norm = norm
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The screened, equal-weight mean of the valid replies with noise for their number; nothing if none."""
        aggregated, metrics = self.screened.aggregate_train(server_round, replies)  # screens, records, averages
        if aggregated is None:
            return None, metrics
        owners = len(self.screened.aggregated)
        self.num_sampled_clients = owners
        return self.releases.release(server_round, aggregated, owners=owners, noise_multiplier=self.noise_multiplier,
                                     clipping_norm=self.clipping_norm, rng=self.rng), metrics


class CentralAdaptive(DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, the norm tracking ``central-target-quantile`` of update norms.

    Parameters
    ----------
    strategy : ScreenedStrategy
        The screened strategy (its checks include :func:`clipped_update_check` with the norm bit).
    config : RunConfig
        The run's settings: ``central-noise``, ``central-clip``, ``central-target-quantile``,
        ``central-clip-lr``, ``central-count-stddev``, ``clients``.
    rng : numpy.random.Generator or None
        The noise source (the updates' and the clipped count's); None: one seeded from the OS.
    """

    def __init__(self, strategy: ScreenedStrategy, *, config: RunConfig,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__(strategy, noise_multiplier=config.central_noise, num_sampled_clients=config.clients,
                         initial_clipping_norm=config.central_clip,
                         target_clipped_quantile=config.central_target_quantile,
                         clip_norm_lr=config.central_clip_lr, clipped_count_stddev=central.count_stddev(config))
        self.screened = strategy
        self.releases = Releases(strategy.recorder, config)
        self.rng = rng if rng is not None else np.random.default_rng()  # OS entropy, never the run's seed

    @property
    def recorder(self) -> RunRecorder:
        """The screened strategy's run recorder."""
        return self.screened.recorder

    @property
    def min_replies(self) -> int:
        """The fewest valid replies the screened strategy aggregates."""
        return self.screened.min_replies

    @property
    def state(self) -> dict[str, Any]:
        """The run's central-DP record (:attr:`Releases.state`)."""
        return self.releases.state

    def connected_nodes(self, grid: Grid, server_round: int, what: str | None = None) -> list[int]:
        """The nodes to sample (:meth:`ScreenedStrategy.connected_nodes`)."""
        return self.screened.connected_nodes(grid, server_round, what)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's: the clipping norm into the train config (after a resume, the norm the run had reached)."""
        norm = self.releases.resumed_norm(server_round)
        if norm is not None:
            self.clipping_norm = norm
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """As :meth:`CentralFixed.aggregate_train` (noise with this round's norm), then the norm moves."""
        aggregated, metrics = self.screened.aggregate_train(server_round, replies)  # screens, records, averages
        if aggregated is None:
            return None, metrics
        averaged = list(self.screened.aggregated)
        self.num_sampled_clients = len(averaged)
        noisy = self.releases.release(server_round, aggregated, owners=len(averaged),
                                      noise_multiplier=self.noise_multiplier, clipping_norm=self.clipping_norm,
                                      rng=self.rng)
        if averaged:
            self._move_norm(averaged)
            self.state["clip_now"] = self.clipping_norm
        return noisy, metrics

    def _move_norm(self, averaged: list[Message]) -> None:
        """The geometric update of Andrew et al. with the noisy share of *unclipped* updates.

        Flower's own update feeds it the clipped share, which drives the norm away from the target
        (module docstring); the update rule itself is Flower's (``clip_norm_lr``, target quantile).
        """
        clipped = 0
        for msg in averaged:
            for record in msg.content.metric_records.values():
                if KEY_NORM_BIT in record:
                    clipped += int(bool(record[KEY_NORM_BIT]))
                    break
        unclipped = 1.0 - (clipped + float(self.rng.normal(0.0, self.clipped_count_stddev))) / len(averaged)
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (unclipped - self.target_clipped_quantile))


def _clip_tolerance(clip: float, reference: dict[str, torch.Tensor]) -> float:
    """The largest update norm a clipped update may show after float32 rounding of ``reference + update``."""
    size = math.sqrt(sum(float(torch.sum(t.to(torch.float64) ** 2)) for t in reference.values()
                         if t.is_floating_point()))
    return clip * (1 + CLIP_SLACK) + 1e-6 * (size + clip)
