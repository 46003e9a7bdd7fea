"""Mean pooling: what a folder declares, padding-independent logits, DP training through it, merging."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedmodel.config import RunConfig
from fedmodel.errors import ConfigError
from fedmodel.llm import (
    LoraSettings,
    LoraTrainSettings,
    ModelSourceError,
    TextShard,
    add_lora,
    fingerprint,
    load_base,
    merge_adapter,
    read_adapter,
    save_adapter,
    tokenize_shard,
    train_lora_round,
)
from fedmodel.llm.pooling import MaskedMeanPooler, declared_pooling, resolve_pooling
from fedmodel.llm.train import _param_groups
from fedmodel.privacy import OwnerPrivacyState

CPU = torch.device("cpu")


def sentence_folder(bert_dir: Path, tmp_path: Path, **modes: bool) -> Path:
    """A copy of the tiny BERT folder with a sentence-transformers pooling declaration."""
    folder = tmp_path / "sentence-bert"
    shutil.copytree(bert_dir, folder)
    (folder / "1_Pooling").mkdir()
    declared = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, **modes}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **declared}))
    return folder


def test_declared_pooling(bert_dir: Path, tmp_path: Path) -> None:
    assert declared_pooling(bert_dir) == "model"
    assert resolve_pooling("auto", bert_dir) == "model"
    folder = sentence_folder(bert_dir, tmp_path)
    assert declared_pooling(folder) == "mean"
    assert resolve_pooling("auto", folder) == "mean" and resolve_pooling("model", folder) == "model"
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                  "pooling_mode_mean_tokens": True}))
    assert declared_pooling(folder) == "model"  # a mix is not the plain mean this head implements
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="1_Pooling"):
        declared_pooling(folder)
    with pytest.raises(ConfigError, match="pooling = 'max'"):
        resolve_pooling("max", bert_dir)


def test_mean_pooling_ignores_padding_and_equals_the_masked_mean(bert_dir: Path) -> None:
    model = load_base(bert_dir, "classification", 2, pooling="mean").model.eval()
    encoder = model.bert
    assert isinstance(encoder.pooler, MaskedMeanPooler)
    ids = torch.randint(5, 100, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=ids.dtype)], dim=1)  # pad id 0
    mask = (padded != 0).long()
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        long = model(input_ids=padded, attention_mask=mask).logits
        states = encoder(input_ids=padded, attention_mask=mask).last_hidden_state
        by_hand = model.classifier(states[:, :6].mean(dim=1))
        cls_model = load_base(bert_dir, "classification", 2, pooling="model").model.eval()
        first_token = cls_model(input_ids=padded, attention_mask=mask).logits
    assert torch.allclose(short, long, atol=1e-5)  # padding changes nothing
    assert torch.allclose(long, by_hand, atol=1e-5)
    assert not torch.allclose(long, first_token, atol=1e-3)  # the model's own head reads something else


def test_mean_pooling_refused_for_an_architecture_without_pooler(gpt2_dir: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from fedmodel.llm.pooling import use_mean_pooling

    model = GPT2ForSequenceClassification(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match="no pooler to replace"):
        use_mean_pooling(model)


def test_dp_round_through_mean_pooling_matches_the_oracle_and_moves_the_head_faster(
    bert_dir: Path, random_texts: Callable[..., list[str]]
) -> None:
    base = load_base(bert_dir, "classification", 2, pooling="mean")
    model = add_lora(base.model, LoraSettings())
    texts = random_texts(24)
    shard = tokenize_shard(base.tokenizer, TextShard("t", tuple(texts), (torch.arange(24) % 2).numpy(), ("a", "b")),
                           max_length=16)
    settings = LoraTrainSettings(batch_size=8, max_physical_batch_size=3, lr=1e-3, head_lr=0.05, rounds=1, epsilon=4.0)
    groups = _param_groups(model, settings)
    assert [g["lr"] for g in groups] == [1e-3, 0.05]
    assert all(any("modules_to_save" in n for n, p in model.named_parameters() if p is q) for q in groups[1]["params"])
    state = OwnerPrivacyState()
    metrics = train_lora_round(model, shard, settings, privacy=state, seed=3, device=CPU)
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=metrics["sample-rate"], noise_multiplier=metrics["noise-multiplier"], steps=3, orders=orders)
    assert metrics["epsilon"] == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=metrics["delta"])[0],
                                               rel=1e-9)


def test_adapter_file_and_merge_keep_mean_pooling(bert_dir: Path, tmp_path: Path) -> None:
    folder = sentence_folder(bert_dir, tmp_path)
    settings = LoraSettings(rank=4, alpha=8)
    model = add_lora(load_base(folder, "classification", 2, pooling="mean").model, settings)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    file = save_adapter(model, tmp_path / "adapter.safetensors", settings, base_fingerprint=fingerprint(folder),
                        pooling="mean")
    assert read_adapter(file).pooling == "mean"
    out = merge_adapter(folder, file, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["fedmodel_pooling"] == "mean"
    assert declared_pooling(out) == "mean"
    merged = load_base(out, "classification", 2, pooling=resolve_pooling("auto", out)).model.eval()
    model.eval()
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(merged(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)


def test_pooling_and_head_lr_are_validated() -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"pooling": "max", "head-lr": -1.0})
    assert "applies to text classification only" in str(err.value)
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping({"task": "classification", "model-path": "/models/m", "dataset": "rotten-tomatoes",
                                "pooling": "max", "head-lr": -1.0})
    text = str(err.value)
    assert "pooling = 'max': expected auto | mean | model" in text and "head-lr = -1.0" in text
