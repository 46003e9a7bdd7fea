"""Loading base models from local folders only: clear errors for missing files, no network, fingerprints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from fedmodel.errors import ConfigError
from fedmodel.llm import FingerprintMismatch, ModelSourceError, check_fingerprint, fingerprint, load_base


def test_offline_switches_are_set_by_the_package() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_loads_both_tasks_without_network(bert_dir: Path, gpt2_dir: Path, no_network: list[object]) -> None:
    bert = load_base(bert_dir, "classification", 3)
    gpt2 = load_base(gpt2_dir, "causal-lm", None)
    assert bert.model.config.num_labels == 3
    assert type(gpt2.model).__name__ == "GPT2LMHeadModel"
    assert bert.tokenizer.pad_token == "[PAD]"
    assert no_network == []


def test_new_head_is_seeded(bert_dir: Path) -> None:
    a = load_base(bert_dir, "classification", 3, seed=7).model.state_dict()["classifier.weight"]
    b = load_base(bert_dir, "classification", 3, seed=7).model.state_dict()["classifier.weight"]
    assert torch.equal(a, b)


def test_missing_folder_named_and_no_network(tmp_path: Path, no_network: list[object]) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelSourceError, match="model folder not found") as info:
        load_base(missing, "classification", 2)
    assert str(missing) in str(info.value)
    assert no_network == []


@pytest.mark.parametrize(("removed", "named"), [
    ("config.json", "config.json"),
    ("model.safetensors", "*.safetensors"),
    ("tokenizer.json", "tokenizer"),
])
def test_missing_file_named_and_no_network(
    bert_dir: Path, tmp_path: Path, no_network: list[object], removed: str, named: str
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(bert_dir, folder)
    (folder / removed).unlink()
    with pytest.raises(ModelSourceError) as info:
        load_base(folder, "classification", 2)
    assert str(folder) in str(info.value) and named in str(info.value)
    assert no_network == []


@pytest.mark.parametrize(("task", "labels"), [("regression", None), ("classification", None),
                                              ("classification", 1), ("causal-lm", 2)])
def test_task_and_labels_checked(bert_dir: Path, task: str, labels: int | None) -> None:
    with pytest.raises(ConfigError):
        load_base(bert_dir, task, labels)  # type: ignore[arg-type]


def test_fingerprint_equal_for_copies_and_refuses_other_weights(bert_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bert_dir, copy)
    expected = fingerprint(bert_dir)
    assert len(expected) == 64 and fingerprint(copy) == expected
    assert check_fingerprint(copy, expected) == expected
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    actual = fingerprint(copy)
    with pytest.raises(FingerprintMismatch) as info:
        check_fingerprint(copy, expected)
    assert expected in str(info.value) and actual in str(info.value) and str(copy) in str(info.value)
