"""Adapter bytes against full model bytes, checked against counts derived from the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BertConfig, BertForSequenceClassification

from fedmodel.llm import LoraSettings, add_lora, load_base, payload_sizes


def test_bert_sizes_match_the_configuration(bert_dir: Path) -> None:
    base = load_base(bert_dir, "classification", 2).model
    full = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    sizes = payload_sizes(add_lora(base, LoraSettings(rank=8)))
    hidden, layers, rank, labels = 32, 2, 8, 2
    lora = layers * 2 * (rank * hidden + hidden * rank)  # A and B for query and value
    head = hidden * labels + labels
    assert sizes.adapter_bytes == 4 * (lora + head)
    assert sizes.full_model_bytes == full
    assert sizes.ratio == pytest.approx(4 * (lora + head) / full)


def test_gpt2_tied_embedding_counted_once(gpt2_dir: Path) -> None:
    base = load_base(gpt2_dir, "causal-lm", None).model
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in base.parameters()}
    buffers = sum(b.numel() * b.element_size() for n, b in base.named_buffers() if n in base.state_dict())
    sizes = payload_sizes(add_lora(base, LoraSettings(rank=8)))
    assert sizes.full_model_bytes == sum(unique.values()) + buffers
    assert sizes.adapter_bytes == 4 * 2 * (8 * 32 + 3 * 32 * 8)  # c_attn: A is r x 32, B is 96 x r


def test_adapter_is_below_one_percent_for_a_realistic_vocabulary() -> None:
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=2)
    sizes = payload_sizes(add_lora(BertForSequenceClassification(config), LoraSettings()))
    assert sizes.ratio < 0.01
