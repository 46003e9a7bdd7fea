"""LoRA wrapping: what trains, the adapter state parties exchange, adapter files and merging."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from safetensors.torch import save_file
from torch import nn

from fedmodel.errors import ConfigError
from fedmodel.llm import (
    AdapterStateError,
    FingerprintMismatch,
    LoraSettings,
    ModelSourceError,
    adapter_state,
    add_lora,
    fingerprint,
    load_adapter_state,
    load_base,
    merge_adapter,
    read_adapter,
    save_adapter,
)


def trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_bert_classifier_trains_adapter_and_head_only(bert_dir: Path) -> None:
    model = add_lora(load_base(bert_dir, "classification", 2).model, LoraSettings())
    names = trainable(model)
    assert sum("lora_" in n for n in names) == 8  # A and B of query and value in 2 layers
    assert sorted(n for n in names if "lora_" not in n) == [
        "base_model.model.classifier.modules_to_save.default.bias",
        "base_model.model.classifier.modules_to_save.default.weight",
    ]
    assert all(".query." in n or ".value." in n for n in names if "lora_" in n)


def test_gpt2_lm_trains_c_attn_adapter_only(gpt2_dir: Path) -> None:
    model = add_lora(load_base(gpt2_dir, "causal-lm", None).model, LoraSettings(rank=4))
    names = trainable(model)
    assert len(names) == 4 and all("c_attn.lora_" in n for n in names)


class ToyConfig:
    model_type = "toy"


class ToyForSequenceClassification(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = ToyConfig()
        self.encoder = nn.Linear(4, 4)
        self.classifier = nn.Linear(4, 2)


def test_unknown_architecture_lists_linear_layers() -> None:
    with pytest.raises(ConfigError, match=r"no default for architecture 'toy'.*classifier, encoder"):
        add_lora(ToyForSequenceClassification(), LoraSettings())


def test_unknown_target_lists_linear_layers(bert_dir: Path) -> None:
    model = load_base(bert_dir, "classification", 2).model
    with pytest.raises(ConfigError, match=r"nope not in the 'bert' model; its Linear layers are: .*query.*value"):
        add_lora(model, LoraSettings(target_modules=("query", "nope")))


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": ()}])
def test_settings_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        LoraSettings(**kwargs)  # type: ignore[arg-type]


def test_adapter_state_round_trip_and_no_opacus_prefix(bert_dir: Path) -> None:
    source = add_lora(load_base(bert_dir, "classification", 2).model, LoraSettings(), seed=1)
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.add_(0.5)
    wrapped = GradSampleModule(source)
    try:
        state = adapter_state(wrapped)
    finally:
        wrapped.cleanup()
    assert state.keys() == adapter_state(source).keys()
    assert not any("_module." in k for k in state)
    assert len(state) == 10 and all("lora_" in k or k.endswith(("classifier.weight", "classifier.bias")) for k in state)
    target = add_lora(load_base(bert_dir, "classification", 2).model, LoraSettings(), seed=2)
    load_adapter_state(target, state)
    assert all(torch.equal(v, adapter_state(target)[k]) for k, v in state.items())


def test_mismatched_adapter_state_refused(bert_dir: Path) -> None:
    model = add_lora(load_base(bert_dir, "classification", 2).model, LoraSettings())
    other = adapter_state(add_lora(load_base(bert_dir, "classification", 2).model, LoraSettings(rank=4)))
    with pytest.raises(AdapterStateError, match=r"\(4, 32\) instead of \(8, 32\)"):
        load_adapter_state(model, other)
    state = adapter_state(model)
    state.pop(next(iter(state)))
    with pytest.raises(AdapterStateError, match="missing base_model"):
        load_adapter_state(model, state)


def test_merge_gives_the_same_predictions(bert_dir: Path, tmp_path: Path) -> None:
    settings = LoraSettings(rank=4, alpha=8)
    model = add_lora(load_base(bert_dir, "classification", 2).model, settings)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    file = save_adapter(model, tmp_path / "adapter.safetensors", settings, base_fingerprint=fingerprint(bert_dir))
    assert read_adapter(file).settings == settings
    out = merge_adapter(bert_dir, file, tmp_path / "merged")
    merged = load_base(out, "classification", 2).model.eval()
    model.eval()
    ids = torch.randint(5, 100, (3, 16))
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    with pytest.raises(ModelSourceError, match="not empty"):
        merge_adapter(bert_dir, file, out)


def test_merge_refuses_other_base_weights(bert_dir: Path, tmp_path: Path) -> None:
    settings = LoraSettings()
    model = add_lora(load_base(bert_dir, "classification", 2).model, settings)
    file = save_adapter(model, tmp_path / "a.safetensors", settings, base_fingerprint="0" * 64)
    with pytest.raises(FingerprintMismatch, match="0{64}"):
        merge_adapter(bert_dir, file, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_adapter_file_without_description_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelSourceError, match="no fedmodel adapter description"):
        read_adapter(plain)
    with pytest.raises(ModelSourceError, match="adapter file not found"):
        read_adapter(tmp_path / "missing.safetensors")
