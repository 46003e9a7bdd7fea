"""DP LoRA rounds: only adapter/head weights change, epsilon equals Opacus' RDP analysis, empty batches train."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant
from torch import nn

import fedmodel.llm.train as train_module
from fedmodel.errors import PrivacyBudgetExceeded
from fedmodel.llm import (
    LoraSettings,
    LoraTrainSettings,
    TextShard,
    TokenizedShard,
    adapter_state,
    add_lora,
    evaluate_causal_lm,
    evaluate_classification,
    load_base,
    tokenize_shard,
    train_lora_round,
)
from fedmodel.llm.source import Task
from fedmodel.privacy import OwnerPrivacyState

CPU = torch.device("cpu")
ORDERS = RDPAccountant.DEFAULT_ALPHAS


def oracle_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=ORDERS)
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(eps)


def lora_model(folder: Path, task: str, n: int, texts: list[str]) -> tuple[nn.Module, TokenizedShard]:
    labels = None if task == "causal-lm" else torch.arange(n) % 2
    base = load_base(folder, task, 2 if labels is not None else None)  # type: ignore[arg-type]
    classes = ("a", "b") if labels is not None else ()
    shard = TextShard("t", tuple(texts), None if labels is None else labels.numpy(), classes)
    return add_lora(base.model, LoraSettings()), tokenize_shard(base.tokenizer, shard, max_length=16)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("folder", "task"), [("bert_dir", "classification"), ("gpt2_dir", "causal-lm")])
def test_dp_round_changes_only_adapter_and_reports_oracle_epsilon(
    request: pytest.FixtureRequest, random_texts: Callable[..., list[str]], folder: str, task: str
) -> None:
    model, shard = lora_model(request.getfixturevalue(folder), task, 24, random_texts(24))
    before = snapshot(model)
    settings = LoraTrainSettings(batch_size=8, max_physical_batch_size=3, lr=0.01, epochs=1, rounds=2, epsilon=4.0)
    state = OwnerPrivacyState()
    metrics = train_lora_round(model, shard, settings, privacy=state, seed=1, device=CPU)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or "modules_to_save" in k for k in changed)
    assert any("lora_B" in k for k in changed)
    if task == "classification":
        assert any("modules_to_save" in k for k in changed)
    assert state.plan is not None and metrics["steps"] == state.plan.steps_per_round == 3
    assert metrics["sample-rate"] == 1 / 3  # 24 examples, logical batch 8
    expected = oracle_epsilon(metrics["sample-rate"], metrics["noise-multiplier"], 3, metrics["delta"])
    assert metrics["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert 0 < metrics["epsilon"] < 4.0 and math.isfinite(metrics["train-loss"])
    state_names = adapter_state(model)
    assert not any("_module." in k for k in state_names)
    assert all("lora_" in k or "classifier" in k for k in state_names)


def test_second_round_on_same_model_accumulates_and_budget_is_enforced(
    bert_dir: Path, random_texts: Callable[..., list[str]]
) -> None:
    model, shard = lora_model(bert_dir, "classification", 24, random_texts(24))
    settings = LoraTrainSettings(batch_size=8, max_physical_batch_size=8, lr=0.01, rounds=2, epsilon=4.0)
    state = OwnerPrivacyState()
    for round_seed in (1, 2):
        metrics = train_lora_round(model, shard, settings, privacy=state, seed=round_seed, device=CPU)
    assert metrics["steps"] == 6
    assert metrics["epsilon"] == pytest.approx(
        oracle_epsilon(metrics["sample-rate"], metrics["noise-multiplier"], 6, metrics["delta"]), rel=1e-9)
    assert metrics["epsilon"] <= 4.0
    before = adapter_state(model)
    with pytest.raises(PrivacyBudgetExceeded):
        train_lora_round(model, shard, settings, privacy=state, seed=3, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in adapter_state(model).items())


def test_a_round_without_a_seed_draws_fresh_noise_and_a_seeded_round_repeats(
    bert_dir: Path, random_texts: Callable[..., list[str]]
) -> None:
    """``seed=None`` is a deployed node's round: noise and sampling from the OS, never the same twice."""
    model, shard = lora_model(bert_dir, "classification", 24, random_texts(24))
    start = snapshot(model)
    settings = LoraTrainSettings(batch_size=8, max_physical_batch_size=8, lr=0.01, rounds=2, epsilon=8.0)

    def one_round(seed: int | None) -> dict[str, torch.Tensor]:
        model.load_state_dict(start)
        train_lora_round(model, shard, settings, privacy=OwnerPrivacyState(), seed=seed, device=CPU)
        return {k: v.detach().clone() for k, v in adapter_state(model).items()}

    seeded, seeded_again, fresh, fresh_again = one_round(1), one_round(1), one_round(None), one_round(None)
    assert all(torch.equal(seeded[k], seeded_again[k]) for k in seeded)
    assert not any(torch.equal(fresh[k], fresh_again[k]) or torch.equal(fresh[k], seeded[k]) for k in fresh)


@pytest.mark.parametrize("folder", ["bert_dir", "gpt2_dir"])
def test_empty_batch_placeholder_has_exactly_zero_per_example_gradient(
    request: pytest.FixtureRequest, random_texts: Callable[..., list[str]], folder: str
) -> None:
    task: Task = "classification" if folder == "bert_dir" else "causal-lm"
    model, shard = lora_model(request.getfixturevalue(folder), task, 4, random_texts(4))
    private = GradSampleModule(model)
    try:
        empty = [shard.input_ids[:0], shard.attention_mask[:0]]
        empty += [shard.labels[:0]] if shard.labels is not None else []
        loss, rows = train_module._batch_loss(private, empty, task, CPU)
        loss.backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert rows == 0 and trainable
        for p in trainable:
            assert p.grad_sample is not None and p.grad_sample.shape[0] == 1
            assert bool((p.grad_sample == 0).all())
    finally:
        private.cleanup()


def test_empty_poisson_batches_are_trained_through(
    bert_dir: Path, random_texts: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, shard = lora_model(bert_dir, "classification", 6, random_texts(6))  # q = 1/3 as above: noise cached
    placeholders = []
    real = train_module.placeholder_batch

    def spy(input_ids: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        placeholders.append(input_ids.shape)
        return real(input_ids, pad)

    monkeypatch.setattr(train_module, "placeholder_batch", spy)
    settings = LoraTrainSettings(batch_size=2, max_physical_batch_size=1, lr=0.01, rounds=2, epsilon=4.0)
    metrics = train_lora_round(model, shard, settings, privacy=OwnerPrivacyState(), seed=1, device=CPU)
    assert placeholders, "no empty Poisson batch was drawn; pick another seed"
    assert metrics["steps"] == 3  # empty batches are steps: the accountant counted all of them


def test_non_dp_round_and_evaluation(
    bert_dir: Path, gpt2_dir: Path, random_texts: Callable[..., list[str]]
) -> None:
    model, shard = lora_model(bert_dir, "classification", 12, random_texts(12))
    settings = LoraTrainSettings(batch_size=6, max_physical_batch_size=4, lr=0.01)
    metrics = train_lora_round(model, shard, settings, privacy=None, seed=0, device=CPU)
    assert "epsilon" not in metrics and metrics["num-examples"] == 12
    scores = evaluate_classification(model, shard, device=CPU, batch_size=5)
    assert set(scores) == {"accuracy", "precision", "recall", "f1", "loss"}
    assert 0 <= scores["accuracy"] <= 1

    lm, lm_shard = lora_model(gpt2_dir, "causal-lm", 4, random_texts(4, length=20, shortest=16))  # no padding
    assert bool(lm_shard.attention_mask.all())
    result = evaluate_causal_lm(lm, lm_shard, device=CPU)
    with torch.no_grad():
        reference = lm(input_ids=lm_shard.input_ids, labels=lm_shard.input_ids).loss  # Hugging Face's own loss
    assert result["loss"] == pytest.approx(float(reference), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
