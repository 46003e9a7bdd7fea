"""Central (client-level) DP: Flower's client-side clipping wrappers around fedmodel's recording strategies.

``central-dp = fixed`` wraps the strategy in Flower's ``DifferentialPrivacyClientSideFixedClipping``,
``adaptive`` in ``DifferentialPrivacyClientSideAdaptiveClipping``. Their ``configure_train`` puts the
clipping norm into every train message, and each owner's ClientApp clips its update to it with
Flower's mod (:mod:`clients.central_dp`) before the update leaves, so the coordinator never holds an
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
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedProx,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.differential_privacy import KEY_NORM_BIT, compute_stdv

from fedmodel.config import RunConfig
from fedmodel.privacy import central
from server.recorder import RunRecorder
from server.strategy import RecordingMixin
from server.validation import update_norm

log = logging.getLogger("fedmodel.server")

_UNIT = "unit-weight"
CLIP_SLACK = 1e-3
"""Relative slack on the clipping norm when screening: float32 rounding of the clipped weights, not more."""


class EqualMeanMixin:
    """FedAvg's train aggregation with every valid update weighted equally (sensitivity C / n of the mean)."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)  # type: ignore[attr-defined]
        if not valid:
            return None, None
        key: str = self.arrayrecord_key  # type: ignore[attr-defined]
        unit = [RecordDict({key: msg.content.array_records[key], _UNIT: MetricRecord({_UNIT: 1})}) for msg in valid]
        arrays = aggregate_arrayrecords(unit, _UNIT)
        aggregate_metrics = self.train_metrics_aggr_fn  # type: ignore[attr-defined]
        metrics = aggregate_metrics([m.content for m in valid], self.weighted_by_key)  # type: ignore[attr-defined]
        return arrays, metrics


class CentralRecordingMixin(RecordingMixin):
    """Screening for central DP: an update must be clipped (and carry its clipped bit when adaptive).

    ``clip_bound`` is the round's clipping norm (set by the wrapper before each round);
    ``aggregated`` the replies the round averaged (their number calibrates the noise).
    """

    clip_bound: float | None = None
    needs_norm_bit: bool = False
    aggregated: list[Message] = []

    def reply_problem(self, msg: Message, reference: dict[str, torch.Tensor],
                      layout: Any) -> str | None:
        reason = super().reply_problem(msg, reference, layout)
        if reason is not None or self.clip_bound is None:
            return reason
        record = next(iter(msg.content.metric_records.values()))
        if self.needs_norm_bit and KEY_NORM_BIT not in record:
            return f"no {KEY_NORM_BIT!r} metric: the owner's ClientApp did not run adaptive clipping"
        update = msg.content.array_records[self.arrayrecord_key].to_torch_state_dict()  # type: ignore[attr-defined]
        norm = update_norm(reference, update)
        if not norm <= _clip_tolerance(self.clip_bound, reference):
            return (f"update norm {norm:.6g} is above the central-DP clipping norm {self.clip_bound:.6g}: the "
                    "owner did not clip its update")
        return None

    def _before_aggregation(self, valid: list[Message]) -> None:
        self.aggregated = list(valid)


class RecordingCentralFedAvg(CentralRecordingMixin, EqualMeanMixin, FedAvg):
    """FedAvg with equal weights that accepts only clipped updates, screened and recorded."""


class RecordingCentralFedProx(CentralRecordingMixin, EqualMeanMixin, FedProx):
    """FedProx (its proximal term is the owners') with equal weights, clipped updates only."""


def inner_strategy(config: RunConfig, common: dict[str, Any]) -> FedAvg:
    """The strategy the wrapper wraps: fedavg or fedprox (the config refuses the rest with central DP)."""
    if config.strategy == "fedprox":
        strategy: CentralRecordingMixin = RecordingCentralFedProx(proximal_mu=config.proximal_mu, **common)
    else:
        strategy = RecordingCentralFedAvg(**common)
    strategy.needs_norm_bit = config.central_dp == "adaptive"
    return strategy  # type: ignore[return-value]


def wrap(strategy: FedAvg, config: RunConfig, *, rng: np.random.Generator | None = None) -> Any:
    """``strategy`` (from :func:`inner_strategy`, set up) inside the wrapper ``central-dp`` names."""
    cls = CentralFixed if config.central_dp == "fixed" else CentralAdaptive
    return cls(strategy, config, rng=rng)


class _CentralDP:
    """What both wrappers add to Flower's: delegation to the recording strategy, noise, the record of releases."""

    strategy: Any
    clipping_norm: float
    noise_multiplier: float
    num_sampled_clients: int

    def _setup(self, config: RunConfig, rng: np.random.Generator | None) -> None:
        self.config = config
        self.rng = rng if rng is not None else np.random.default_rng()  # OS entropy, never the run's seed
        self._synced = False

    def __getattr__(self, name: str) -> Any:
        """The recording strategy's attributes (recorder, connected_nodes, min_replies, ...)."""
        if name in ("strategy", "__setstate__") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def state(self) -> dict[str, Any]:
        """The run's central-DP record, kept by the recorder (checkpointed with it)."""
        recorder: RunRecorder = self.strategy.recorder
        if recorder.central is None:
            recorder.central = central.new_state(self.config)
        return recorder.central

    def _before_round(self, server_round: int) -> None:
        state = self.state
        if not self._synced:  # a resumed run: the norm it had reached, one more release for the round in flight
            self._synced = True
            self.clipping_norm = float(state["clip_now"])
            resumes = self.strategy.recorder.resumes
            in_flight = int(resumes[-1]["in_flight_round"]) if resumes else None
            charged = {int(r["round"]) for r in state["charged_on_resume"]}
            if in_flight == server_round and server_round not in charged:
                state["charged_on_resume"].append({
                    "round": server_round, "noise_multiplier": state["accounted_noise_multiplier"],
                    "reason": "the run stopped in this round and may have released it before; charged again",
                })
        self.strategy.clip_bound = self.clipping_norm

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        """Gaussian noise ``z * C / n`` on the mean, n = the updates averaged, from this wrapper's generator."""
        arrays = aggregated.to_numpy_ndarrays()
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        for array in arrays:
            array += self.rng.normal(0.0, std, array.shape).astype(array.dtype)
        log.info("central DP: noise std %.6g on the mean of %d clipped updates (clip %.6g)", std,
                 self.num_sampled_clients, self.clipping_norm)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(aggregated.keys(), arrays, strict=True)})

    def _release(self, server_round: int, aggregated: ArrayRecord) -> ArrayRecord:
        """Noise the mean of the updates the round averaged and record the release."""
        owners = len(self.strategy.aggregated)
        self.num_sampled_clients = owners
        noisy = self._add_noise_to_aggregated_arrays(aggregated)
        state = self.state
        state["releases"].append({
            "round": server_round, "owners": owners, "clip": self.clipping_norm,
            "noise_std": compute_stdv(self.noise_multiplier, self.clipping_norm, owners),
            "noise_multiplier": state["accounted_noise_multiplier"],
        })
        return noisy

    def _aggregate(self, server_round: int,
                   replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        self.strategy.aggregated = []
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)  # screens, records, equal mean
        if aggregated is None:
            return None, metrics, []
        return self._release(server_round, aggregated), metrics, list(self.strategy.aggregated)


class CentralFixed(_CentralDP, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping: each owner clips to ``central-clip``, noise ``z C / n`` on the mean."""

    def __init__(self, strategy: FedAvg, config: RunConfig, *, rng: np.random.Generator | None = None) -> None:
        DifferentialPrivacyClientSideFixedClipping.__init__(
            self, strategy, noise_multiplier=config.central_noise, clipping_norm=config.central_clip,
            num_sampled_clients=config.clients)
        self._setup(config, rng)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._before_round(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        aggregated, metrics, _ = self._aggregate(server_round, replies)
        return aggregated, metrics


class CentralAdaptive(_CentralDP, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, the norm tracking ``central-target-quantile`` of update norms."""

    def __init__(self, strategy: FedAvg, config: RunConfig, *, rng: np.random.Generator | None = None) -> None:
        DifferentialPrivacyClientSideAdaptiveClipping.__init__(
            self, strategy, noise_multiplier=config.central_noise, num_sampled_clients=config.clients,
            initial_clipping_norm=config.central_clip, target_clipped_quantile=config.central_target_quantile,
            clip_norm_lr=config.central_clip_lr, clipped_count_stddev=central.count_stddev(config))
        self._setup(config, rng)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._before_round(server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        aggregated, metrics, averaged = self._aggregate(server_round, replies)  # noised with this round's norm
        if averaged:
            self._update_clip_norm_from_replies(averaged)
            self.state["clip_now"] = self.clipping_norm
        return aggregated, metrics

    def _noisy_fraction(self, count: int, total: int) -> float:
        """The noisy share of updates left *unclipped* (``count`` is of clipped ones), as Andrew et al. use it."""
        return 1.0 - (count + float(self.rng.normal(0.0, self.clipped_count_stddev))) / total


def _clip_tolerance(clip: float, reference: dict[str, torch.Tensor]) -> float:
    """The largest update norm a clipped update may show after float32 rounding of ``reference + update``."""
    size = math.sqrt(sum(float(torch.sum(t.to(torch.float64) ** 2)) for t in reference.values()
                         if t.is_floating_point()))
    return clip * (1 + CLIP_SLACK) + 1e-6 * (size + clip)
