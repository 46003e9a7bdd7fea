"""Empirical privacy audit in one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

A testing aid: it checks that a run leaks no more than its proven epsilon, and catches a broken
one. ``m`` canary examples go to the audited owners; each canary is included in its owner's
training data independently with probability 1/2 (the secret ``S``). After training, an auditor
who knows the canaries but not ``S`` scores each one with the final global model, guesses "in" for
the ``k+`` highest scores and "out" for the ``k-`` lowest and abstains on the rest. If the run is
(eps, delta)-DP with respect to each canary, that many correct guesses are unlikely; the largest
eps the observed count rejects at level ``beta`` is a lower bound on the true epsilon (with
probability ``1 - beta``). A correct run's bound stays below its proven epsilon; a run whose bound
is above it is not DP as claimed.

Choices, fixed in advance:

* canaries: inputs along the directions in which the run's real training rows have the least
  energy (the eigenvectors of their second moment with the smallest eigenvalues), one canary per
  direction and label, ``ceil(m / classes)`` directions, norm ``CANARY_NORM_FACTOR * sqrt(d)``.
  Along such a direction the real examples barely move the model, so what moves its answer there
  is the canaries; canaries on one direction differ in label, and the label a canary pushes up is
  its own. Random directions, or inputs far from the data, were tried and drowned in what the
  model learns from the real rows (a noise-free run then looked private). A canary is an example in
  the model's input space (after cleaning and scaling): it takes part in DP-SGD like any example
  (the owner's example count, sample rate and proven epsilon include it), not in the federated
  scaling statistics. At most ``features x classes`` canaries; past about a third of that they
  share directions the real rows use and the audit weakens.
* score: the gain in the canary label's centred logit (its logit less the mean logit, the
  log-probability up to a term common to all labels) from the initial to the final global model.
* guesses: ``k+ = k- = k`` and ``k+ = k, k- = 0`` for every ``k`` in :data:`GUESS_FRACTIONS` of
  ``m`` (``k = m / 2`` guesses every canary); every pair is tested at ``beta / number of pairs``
  (Bonferroni), so the largest bound over the grid still holds with probability ``1 - beta``.
  "In" guesses alone help when the model already predicted some included canaries before they
  were trained on (no push, no gain: they look excluded, which spoils "out" guesses).
* epsilon: the paper's p-value for (eps, delta)-DP (its Algorithm, :func:`p_value`), the bound the
  largest eps whose p-value is below the level (:func:`epsilon_lower_bound`). With ``delta = 0``
  it is the binomial tail of Theorem 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmodel.config import RunConfig
from fedmodel.data import Dataset, FederatedSplit, federated_split
from fedmodel.errors import ConfigError, FedModelError

BETA = 0.05
"""The audit's significance level: the bound holds with probability 1 - BETA."""
GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
"""The guess counts k tried, as shares of the canaries."""
CANARY_NORM_FACTOR = 1.0
"""A canary's norm is this times sqrt(features), the norm of a vector of unit-scale features.

Larger canaries saturate the softmax at their input within a few steps, after which the canaries
sharing a direction stop telling apart; smaller ones move the model too little to be seen.
"""
_SEARCH_STEPS = 40


@dataclass(frozen=True, eq=False)
class Canaries:
    """The audit's canaries: inputs, labels, the owner each goes to, and the secret ``included``."""

    x: np.ndarray
    y: np.ndarray
    owner: np.ndarray
    included: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def for_owner(self, owner: int) -> tuple[np.ndarray, np.ndarray]:
        """The canaries ``owner`` trains on: its share of the canaries that ``S`` includes."""
        keep = (self.owner == owner) & self.included
        return self.x[keep], self.y[keep]


def make_canaries(*, seed: int, count: int, reference: np.ndarray, num_classes: int,
                  owners: tuple[int, ...]) -> Canaries:
    """``count`` canaries dealt to ``owners`` in turn, each included with probability 1/2; seeded.

    ``reference`` is the run's training features (every owner's rows): the canaries lie along the
    ``ceil(count / classes)`` directions in which those rows have the least energy (the smallest
    eigenvalues of their second moment), one canary per direction and label. The coordinator and
    the owners derive the same canaries and the same secret from the run's data and seed
    (simulation only: the auditor must know the secret).
    """
    rows, features = reference.shape
    directions = math.ceil(count / num_classes)
    if count < 1 or not owners or rows < 1:
        raise ValueError("an audit needs at least one canary, one owner and one reference row")
    if directions > features:
        raise ValueError(f"{count} canaries: at most features x classes = {features} x {num_classes} = "
                         f"{features * num_classes} are told apart")
    x64 = np.nan_to_num(reference.astype(np.float64))
    _, vectors = np.linalg.eigh(x64.T @ x64 / rows)  # ascending eigenvalues
    quiet = vectors[:, :directions].T
    index = np.arange(count)
    direction = index % directions
    x = (CANARY_NORM_FACTOR * math.sqrt(features) * quiet[direction]).astype(np.float32)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA0D17]))
    offset = rng.integers(0, num_classes, size=directions)
    y = ((offset[direction] + index // directions) % num_classes).astype(np.int64)
    included = rng.random(count) < 0.5
    owner = np.asarray([owners[i % len(owners)] for i in range(count)], dtype=np.int64)
    return Canaries(x, y, owner, included)


def with_canaries(data: Dataset, canaries: Canaries, owner: int) -> Dataset:
    """``data`` with ``owner``'s included canaries appended (the shard DP-SGD trains on and accounts for)."""
    x, y = canaries.for_owner(owner)
    rows = None if data.rows is None else np.concatenate([data.rows, np.full(len(y), -1, data.rows.dtype)])
    return Dataset(data.name, np.concatenate([data.x, x.astype(data.x.dtype)]), np.concatenate([data.y, y]),
                   data.classes, data.feature_names, data.preprocessing, rows, data.zero_based)


def run_canaries(config: RunConfig, split: FederatedSplit) -> Canaries:
    """The run's canaries: every owner's training rows as the reference, the run's seed and audited owners.

    Raises ConfigError when the data set has too few features and classes for ``audit-canaries``.
    """
    reference = split.data.x[np.concatenate(split.owner_rows)]
    try:
        return make_canaries(seed=config.seed, count=config.audit_canaries, reference=reference,
                             num_classes=split.data.num_classes, owners=config.audited_owners)
    except ValueError as exc:
        raise ConfigError([f"audit-canaries = {config.audit_canaries}: {exc} in {config.dataset_label}; "
                           "use fewer (--audit-canaries)"]) from None


def shard_with_canaries(config: RunConfig, owner: int, simulated: bool, data: Dataset) -> Dataset:
    """The shard an owner trains on: with ``--audit``, its included canaries appended.

    A deployed owner refuses: it would train on, and spend its budget for, examples a coordinator
    chose, and the audit needs the secret inclusion bits, which only a simulation can share.
    """
    if not config.audit:
        return data
    if not simulated:
        raise FedModelError(f"owner {owner}: the privacy audit (audit = true) runs in simulation only; a deployed "
                            "owner does not train on canaries a coordinator chose")
    if owner not in config.audited_owners:
        return data
    return with_canaries(data, run_canaries(config, federated_split(config)), owner)


@torch.no_grad()
def canary_scores(initial: nn.Module, final: nn.Module, canaries: Canaries) -> np.ndarray:
    """Each canary's gain in centred logit of its label, initial to final model: high means "in".

    The centred logit (the label's logit less the mean of all logits) is the log-probability up to
    a term shared by every label at that input, so canaries on one direction compare fairly.
    """
    x, y = torch.from_numpy(canaries.x), torch.from_numpy(canaries.y)

    def margin(model: nn.Module) -> np.ndarray:
        model.eval()
        logits = model(x).double()
        return (logits.gather(1, y[:, None])[:, 0] - logits.mean(dim=1)).numpy()

    return margin(final) - margin(initial)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] for an (epsilon, delta)-DP run with m canaries (upper bound).

    Steinke, Nasr and Jagielski (2023), Algorithm in their appendix: the binomial tail of
    epsilon-DP randomised response plus ``2 m delta`` times the largest average of the binomial
    mass just below ``v``. With ``delta = 0`` it is ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]``.
    """
    if not (0 <= v <= r <= m) or epsilon < 0 or not (0 <= delta <= 1):
        raise ValueError(f"need 0 <= v <= r <= m, epsilon >= 0 and delta in [0, 1]; got m={m} r={r} v={v} "
                         f"epsilon={epsilon} delta={delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    pmf = _binomial_pmf(r, q)
    tail = float(pmf[v:].sum())
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    below = pmf[v - 1::-1]  # P[B = v-1], P[B = v-2], ..., P[B = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(tail + alpha * delta * 2 * m, 1.0)


def _binomial_pmf(r: int, q: float) -> np.ndarray:
    """P[Binomial(r, q) = k] for k = 0..r, in log space (scipy's is the tests' oracle, not a dependency)."""
    k = np.arange(r + 1, dtype=np.float64)
    log_choose = np.array([math.lgamma(r + 1) - math.lgamma(i + 1) - math.lgamma(r - i + 1) for i in range(r + 1)])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = log_choose + np.where(k > 0, k * math.log(q), 0.0) + np.where(
            k < r, (r - k) * (math.log1p(-q) if q < 1 else -math.inf), 0.0)
    return np.exp(log_pmf)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """The largest epsilon that ``v`` correct of ``r`` guesses reject at level ``beta`` (0 if none)."""
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:  # p_value grows with epsilon
        low, high = high, 2 * high
        if high > 1e4:
            return low
    for _ in range(_SEARCH_STEPS):
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class AuditResult:
    """The audit's outcome; ``lower_bound`` holds with probability ``1 - beta``."""

    canaries: int
    included: int
    guesses_in: int
    guesses_out: int
    correct: int
    beta: float
    delta: float
    lower_bound: float
    pairs_tried: int

    @property
    def guesses(self) -> int:
        return self.guesses_in + self.guesses_out


def guess_pairs(m: int) -> list[tuple[int, int]]:
    """The (k+, k-) pairs tried for m canaries, fixed before looking at any score."""
    ks = sorted({min(max(1, int(f * m)), m // 2) for f in GUESS_FRACTIONS})
    return [(k, k) for k in ks] + [(k, 0) for k in ks]


def audit_scores(scores: np.ndarray, included: np.ndarray, *, delta: float, beta: float = BETA) -> AuditResult:
    """The best Bonferroni-corrected bound over :func:`guess_pairs` for these scores and the secret."""
    m = int(scores.shape[0])
    if m != included.shape[0] or m < 2:
        raise ValueError(f"need at least two scores, one per canary; got {m} scores, {included.shape[0]} secrets")
    if not np.all(np.isfinite(scores)):
        raise ValueError("canary scores must be finite (did the final model diverge?)")
    order = np.argsort(-scores, kind="stable")  # highest first; ties in canary order, which S does not affect
    pairs = guess_pairs(m)
    level = beta / len(pairs)
    best: AuditResult | None = None
    for k_in, k_out in pairs:
        correct = int(included[order[:k_in]].sum()) + (int((~included[order[m - k_out:]]).sum()) if k_out else 0)
        bound = epsilon_lower_bound(m, k_in + k_out, correct, delta=delta, beta=level)
        result = AuditResult(m, int(included.sum()), k_in, k_out, correct, beta, delta, bound, len(pairs))
        if best is None or bound > best.lower_bound:
            best = result
    assert best is not None
    return best


def audit_report(result: AuditResult, *, proven_epsilon: float | None, dp: bool, owners: list[int]) -> dict[str, Any]:
    """``privacy.audit`` of report.json: the numbers, the proven epsilon beside them, the verdict.

    ``proven_epsilon`` is None without DP (infinite) or when no audited owner reported one.
    """
    if not dp:
        verdict = "no DP guarantee to check (--no-dp: the proven epsilon is infinite)"
    elif proven_epsilon is None:
        verdict = "no proven epsilon to compare (no audited owner reported one)"
    elif result.lower_bound > proven_epsilon:
        verdict = "VIOLATION: lower bound above the proven epsilon"
    else:
        verdict = "consistent"
    return {
        "method": "one-run audit (Steinke, Nasr and Jagielski 2023): canaries scored with the run's models",
        "owners": owners, "canaries": result.canaries, "canaries_included": result.included,
        "guesses": result.guesses, "guesses_in": result.guesses_in, "guesses_out": result.guesses_out,
        "correct": result.correct, "beta": result.beta, "delta": result.delta,
        "guess_counts_tried": result.pairs_tried, "lower_bound_epsilon": result.lower_bound,
        "proven_epsilon": proven_epsilon, "verdict": verdict,
    }
