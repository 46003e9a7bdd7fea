"""What a deployed owner's node releases besides its DP-SGD update: evaluation metrics and reply numbers.

An evaluate message asks the node to run a model the coordinator chose on the owner's rows. Exact
metrics make that an oracle: a logistic unit with weight 1 on feature ``j`` and bias ``-t`` turns
``accuracy x num-examples`` into the number of rows with ``x_j > t``. So by default (node option
``--evaluation dp``) the node releases only three sums, through the Gaussian mechanism, charged to the
owner's privacy account before release (:func:`release_evaluation`), and every metric of the reply is
computed from them. Train replies' ``train-loss`` is withheld and their data-quality counts are
coarsened (:func:`coarse_count`) unless the owner passes ``--exact-replies``.

Simulation (one trusted process tree) releases exact numbers as before; nothing here is used there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmodel.privacy.randomness import OsRandom

EVALUATION_LOSS_CLIP = 5.0
"""C: each example's cross-entropy is clipped to [0, C] before it is summed (the loss of a prediction
giving the true class probability e^-5 = 0.7 %; anything worse counts as equally wrong). The loss
coordinate's noise is proportional to C, so a smaller C gives a more precise, more biased loss."""

DEFAULT_EVALUATION_NOISE = 10.0
"""Default noise multiplier of an evaluation release: epsilon 0.375 for one release at delta 1e-5 (RDP,
measured with :func:`fedmodel.privacy.accounting.gaussian_sum_epsilon`); 1.31 for ten alone. In a
10-round DP-SGD run of epsilon 3 that also plans ten evaluations, the DP-SGD noise multiplier of a
1000-row shard rises from 1.17 to 1.25. The noise on the example count is then N(0, 17.3^2)."""

EVALUATION_SENSITIVITY = math.sqrt(3.0)
"""L2 sensitivity of the released vector (examples, correct, clipped loss sum / C) under add/remove-one."""

EVALUATION_FLAG = "evaluation-dp"
"""Metric of a deployed node's evaluate reply: 1.0 when its numbers are a DP release, 0.0 when exact."""

EVALUATION_EPSILON = "evaluation-epsilon"
"""Metric of a deployed node's evaluate reply: the epsilon of this release alone (0.0 when exact)."""

EXACT_REPLIES_FLAG = "exact-replies"
"""Metric of a deployed node's train reply: 1.0 when train-loss and quality counts are exact, 0.0 when not."""

WITHHELD_METRICS = ("precision", "recall", "f1")
"""Metrics a DP evaluation reply does not release (sent as NaN, so every deployed reply has one layout)."""


@dataclass(frozen=True)
class EvaluationSums:
    """The exact sums a DP evaluation release is computed from (never sent).

    Attributes
    ----------
    examples : int
        Rows evaluated.
    correct : int
        Rows whose arg-max prediction is the label.
    clipped_loss : float
        Sum over rows of the cross-entropy clipped to [0, ``loss_clip``].
    loss_clip : float
        The clip C.
    """

    examples: int
    correct: int
    clipped_loss: float
    loss_clip: float = EVALUATION_LOSS_CLIP

    def __post_init__(self) -> None:
        if not (0 <= self.correct <= self.examples):
            raise ValueError(f"correct = {self.correct}: expected 0 <= correct <= examples = {self.examples}")
        if not (math.isfinite(self.loss_clip) and self.loss_clip > 0):
            raise ValueError(f"loss_clip = {self.loss_clip!r}: expected a finite number > 0")
        if not (0.0 <= self.clipped_loss <= self.examples * self.loss_clip * (1 + 1e-9)):
            raise ValueError(f"clipped_loss = {self.clipped_loss!r}: expected a sum of values in [0, {self.loss_clip}]")

    def vector(self) -> np.ndarray:
        """The query q(D) = (examples, correct, clipped_loss / C): each coordinate moves by at most 1 per row."""
        return np.array([self.examples, self.correct, self.clipped_loss / self.loss_clip], dtype=np.float64)


@dataclass(frozen=True)
class NoisyEvaluation:
    """One Gaussian release of :meth:`EvaluationSums.vector`; every metric is post-processing of it."""

    examples: float
    correct: float
    clipped_loss: float  # in loss units (the noisy scaled coordinate times C)
    noise_multiplier: float
    loss_clip: float

    def metrics(self) -> dict[str, float]:
        """The reply's metrics, from the noisy sums only.

        ``num-examples`` is the noisy count rounded and at least 1 (the coordinator weighs by it);
        ``accuracy`` and ``loss`` are ratios of noisy sums over that count, clipped to their ranges
        ([0, 1] and [0, C]); precision, recall and F1 are not released (NaN).
        """
        n = max(1.0, float(round(self.examples)))
        out = {
            "num-examples": n,
            "accuracy": min(max(self.correct / n, 0.0), 1.0),
            "loss": min(max(self.clipped_loss / n, 0.0), self.loss_clip),
        }
        out.update({k: math.nan for k in WITHHELD_METRICS})
        out[EVALUATION_FLAG] = 1.0
        return out


def gaussian_noise(std: float, size: int, rng: np.random.Generator | OsRandom) -> np.ndarray:
    """N(0, std^2) per coordinate, as the sum of four draws of N(0, std^2) halved.

    The same defence Opacus' ``secure_mode`` uses against attacks on the floating-point
    representation of one Gaussian sample (arXiv 2107.10138, 2112.05307): the sum of 2n draws
    divided by sqrt(2n) has the same distribution, and its low-order bits are far harder to invert.
    """
    draws = rng.normal(0.0, std, size=(4, size))
    return draws.sum(axis=0) / 2.0


def release_evaluation(sums: EvaluationSums, noise_multiplier: float, *,
                       rng: np.random.Generator | OsRandom | None = None) -> NoisyEvaluation:
    r"""The Gaussian mechanism on (examples, correct, clipped loss / C), to be charged *before* it is called.

    Derivation. The model is fixed before the rows are read (the coordinator's weights), so each row
    ``i`` contributes ``(1, c_i, l_i / C)`` to the query, with ``c_i`` in {0, 1} (prediction right) and
    ``l_i`` in [0, C] (its clipped cross-entropy). Neighbouring shards differ by adding or removing one
    row, the adjacency of the rest of the project's accounting (Opacus' RDP accountant with Poisson
    sampling, DP-SGD at the owner), so the query moves by ``(1, c_i, l_i / C)``, whose L2 norm is at
    most :math:`\sqrt{1^2 + 1^2 + 1^2} = \sqrt{3}` (:data:`EVALUATION_SENSITIVITY`). Adding
    N(0, (sigma sqrt(3))^2) to each coordinate is the Gaussian mechanism with noise multiplier sigma:
    its Renyi DP of order alpha is alpha / (2 sigma^2), exactly one DP-SGD step with sample rate 1 and
    noise multiplier sigma, so the ledger charges it as the accountant entry ``(sigma, 1.0, 1)`` and
    composes it with everything else the owner released. (Under replace-one adjacency the count would
    not move and the sensitivity would be sqrt(2); add/remove is the stricter, consistent choice.)

    The sensitivity is that of the *prepared* shard: cleaning that uses the owner's own statistics
    (local means, quartiles) lets one raw row move others, which this bound does not cover.

    Parameters
    ----------
    sums : EvaluationSums
        The exact sums (computed on the owner's rows; never leave the node).
    noise_multiplier : float
        sigma > 0: noise standard deviation over the L2 sensitivity.
    rng : numpy.random.Generator or None
        The noise source; None draws every bit from the OS CSPRNG (:class:`~fedmodel.privacy.randomness.OsRandom`;
        a deployed node always passes None).

    Returns
    -------
    NoisyEvaluation
        The noisy sums (loss in loss units); :meth:`NoisyEvaluation.metrics` gives the reply.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier = {noise_multiplier!r}: expected a finite number > 0")
    noisy = sums.vector() + gaussian_noise(noise_multiplier * EVALUATION_SENSITIVITY, 3,
                                           rng if rng is not None else OsRandom())
    return NoisyEvaluation(float(noisy[0]), float(noisy[1]), float(noisy[2]) * sums.loss_clip,
                           float(noise_multiplier), sums.loss_clip)


# ---------------------------------------------------------------------------------------- train replies
def coarse_count(value: int) -> int:
    """``value`` rounded to one significant digit, in steps of at least 10 (half up).

    0-4 -> 0, 5-14 -> 10, ..., 95-149 -> 100, 150-249 -> 200, ..., 1234 -> 1000.
    What it still reveals: the order of magnitude and leading digit of each count. One row changes
    the reported value only when the count sits at a bucket boundary (so a count below 5, a rare
    duplicate or a single gap, reads 0). It is deterministic rounding, not DP: a coordinator that
    varies the cleaning settings across runs can still learn where a count crosses a boundary.
    """
    v = int(value)
    if v < 0:
        raise ValueError(f"count = {v}: expected >= 0")
    step = max(10, 10 ** (len(str(v)) - 1))
    return (v + step // 2) // step * step


def coarse_quality(counts: Mapping[str, int]) -> dict[str, int]:
    """Every data-quality count coarsened with :func:`coarse_count`."""
    return {k: coarse_count(v) for k, v in counts.items()}


def coarse_train_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A train reply's metrics without the exact ``train-loss`` (sent as NaN) and with the flag set to 0.

    The loss is withheld rather than rounded: cross-entropy is unbounded, so a crafted model makes one
    row's loss as large as it likes, and no rounding of the mean bounds what it reveals. NaN keeps the
    metric layout every deployed reply shares (the coordinator skips NaN losses when it averages).
    """
    return {**metrics, "train-loss": math.nan, EXACT_REPLIES_FLAG: 0.0}
