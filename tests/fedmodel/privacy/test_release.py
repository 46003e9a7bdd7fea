"""The DP evaluation release and the coarsening of train replies (fedmodel.privacy.release)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmodel.data import Dataset
from fedmodel.privacy.release import (
    EVALUATION_LOSS_CLIP,
    EVALUATION_SENSITIVITY,
    EvaluationSums,
    coarse_count,
    coarse_quality,
    coarse_train_metrics,
    release_evaluation,
)
from fedmodel.training import evaluate, evaluation_sums


def dataset(rows: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    y = rng.integers(0, 3, rows).astype(np.int64)
    return Dataset("t", x, y, ("a", "b", "c"), ("f0", "f1", "f2"))


def hostile_model(scale: float) -> torch.nn.Module:
    """A linear model with huge logits: unclipped, one row's loss would be as large as ``scale``."""
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[scale, 0, 0], [0, -scale, 0], [0, 0, scale]]))
        model.bias.zero_()
    return model


@pytest.mark.parametrize("scale", [1.0, 1e6])
def test_one_row_moves_the_released_vector_by_at_most_the_sensitivity(scale: float) -> None:
    """Add/remove-one: every row's contribution (1, correct, clipped loss / C) has L2 norm <= sqrt(3)."""
    data = dataset(30)
    model = hostile_model(scale)
    full = evaluation_sums(model, data, device=torch.device("cpu"), loss_clip=EVALUATION_LOSS_CLIP).vector()
    for i in range(len(data)):
        keep = np.arange(len(data)) != i
        fewer = Dataset("t", data.x[keep], data.y[keep], data.classes, data.feature_names)
        rest = evaluation_sums(model, fewer, device=torch.device("cpu"), loss_clip=EVALUATION_LOSS_CLIP).vector()
        assert np.linalg.norm(full - rest) <= EVALUATION_SENSITIVITY + 1e-9


def test_the_sums_agree_with_the_exact_evaluation_when_no_loss_is_clipped() -> None:
    data = dataset(200)
    model = hostile_model(0.5)
    sums = evaluation_sums(model, data, device=torch.device("cpu"), loss_clip=1e9)
    exact = evaluate(model, data, device=torch.device("cpu"))
    assert sums.examples == 200
    assert sums.correct / 200 == pytest.approx(exact["accuracy"])
    assert sums.clipped_loss / 200 == pytest.approx(exact["loss"], rel=1e-5)


def test_the_noise_really_added_has_the_charged_standard_deviation() -> None:
    """Measured on the default (secure) source: std sigma * sqrt(3) per coordinate, C times that on the loss."""
    sums = EvaluationSums(1000, 700, 1500.0)
    sigma = 4.0
    draws = np.array([[r.examples, r.correct, r.clipped_loss]
                      for r in (release_evaluation(sums, sigma) for _ in range(4000))])
    noise = draws - np.array([1000, 700, 1500.0])
    expected = sigma * math.sqrt(3) * np.array([1.0, 1.0, EVALUATION_LOSS_CLIP])
    assert np.abs(noise.mean(axis=0)) == pytest.approx(np.zeros(3), abs=float(4 * expected.max() / math.sqrt(4000)))
    assert noise.std(axis=0) == pytest.approx(expected, rel=0.05)  # 4.4 standard errors of the std


def test_the_secure_source_ignores_every_seed_the_coordinator_could_set() -> None:
    sums = EvaluationSums(100, 50, 60.0)
    np.random.seed(0)
    torch.manual_seed(0)
    first = release_evaluation(sums, 1.0)
    np.random.seed(0)
    torch.manual_seed(0)
    assert release_evaluation(sums, 1.0) != first


def test_metrics_are_post_processing_of_the_noisy_sums_only() -> None:
    rng = np.random.default_rng(3)
    released = release_evaluation(EvaluationSums(3, 3, 0.0), 50.0, rng=rng)
    m = released.metrics()
    assert m["num-examples"] >= 1 and m["num-examples"].is_integer()
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["loss"] <= EVALUATION_LOSS_CLIP
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1")) and m["evaluation-dp"] == 1.0


def test_sums_and_noise_refuse_impossible_inputs() -> None:
    with pytest.raises(ValueError, match="correct"):
        EvaluationSums(3, 4, 0.0)
    with pytest.raises(ValueError, match="clipped_loss"):
        EvaluationSums(3, 1, 16.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        release_evaluation(EvaluationSums(3, 1, 1.0), 0.0)


@pytest.mark.parametrize(("value", "coarse"), [(0, 0), (4, 0), (5, 10), (14, 10), (63, 60), (95, 100), (149, 100),
                                               (150, 200), (1234, 1000), (98765, 100000)])
def test_counts_are_rounded_to_one_significant_digit_in_steps_of_at_least_ten(value: int, coarse: int) -> None:
    assert coarse_count(value) == coarse


def test_coarse_train_numbers_keep_their_layout() -> None:
    assert coarse_quality({"rows": 63, "duplicate-rows": 2}) == {"rows": 60, "duplicate-rows": 0}
    metrics = coarse_train_metrics({"num-examples": 63.0, "train-loss": 0.42, "epsilon": 1.0})
    assert set(metrics) == {"num-examples", "train-loss", "epsilon", "exact-replies"}
    assert math.isnan(metrics["train-loss"]) and metrics["exact-replies"] == 0.0
    with pytest.raises(ValueError):
        coarse_count(-1)
