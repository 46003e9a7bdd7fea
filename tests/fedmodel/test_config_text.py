"""The run config's language-model keys: defaults, validation, and the node's model folder."""

from __future__ import annotations

import pytest

from fedmodel.config import NodeSettings, RunConfig
from fedmodel.errors import ConfigError

TEXT = {"task": "classification", "dataset": "rotten-tomatoes", "model-path": "/models/minilm"}


def test_a_text_run_parses_its_keys() -> None:
    config = RunConfig.from_mapping({**TEXT, "lora-targets": "query, key,value", "max-length": 48, "lora-rank": 4,
                                     "lora-alpha": 8, "lora-dropout": 0.1, "physical-batch-size": 16,
                                     "max-rows": 5000, "text-column": "review"})
    assert config.lora_targets == ("query", "key", "value")
    assert (config.max_length, config.lora_rank, config.lora_alpha, config.lora_dropout) == (48, 4, 8, 0.1)
    assert (config.physical_batch_size, config.max_rows, config.text_column) == (16, 5000, "review")
    assert RunConfig.from_mapping(config.to_mapping()) == config  # round trip through run_config / config.toml


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"task": "vision"}, "task = 'vision': expected tabular | classification | causal-lm"),
        ({"model-path": ""}, "model-path = '': a text task needs the absolute path"),
        ({"model-path": "models/minilm"}, "model-path = 'models/minilm'"),
        ({"max-length": 1}, "max-length = 1: expected an integer >= 2"),
        ({"lora-rank": 0}, "lora-rank = 0"),
        ({"lora-alpha": 0}, "lora-alpha = 0"),
        ({"lora-dropout": 1.0}, "lora-dropout = 1.0: expected a number in [0, 1)"),
        ({"physical-batch-size": 0}, "physical-batch-size = 0"),
        ({"max-rows": -1}, "max-rows = -1"),
        ({"strategy": "fedprox"}, "LoRA training has no proximal term"),
        ({"scaling": "zscore"}, "scaling = 'zscore': applies to tables only"),
        ({"id-columns": "user"}, "id-columns = 'user': applies to tables only"),
        ({"dataset": "digits"}, "dataset = 'digits' with task = 'classification': a table of numbers"),
        ({"task": "causal-lm", "partition": "dirichlet:0.5"}, "label-based partitions need labels"),
        ({"task": "tabular"}, "dataset = 'rotten-tomatoes': a text data set"),
        ({"resume": True}, "resume = True: not available for text runs yet"),
        ({"min-clients": "3"}, "min-clients = '3': not available for text runs yet"),
    ],
    ids=lambda v: str(v),
)
def test_invalid_text_settings_name_the_key(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({**TEXT, **changes})
    assert any(needle in p for p in info.value.problems), info.value.problems


def test_max_rows_is_for_text_only_and_causal_lm_needs_no_label() -> None:
    with pytest.raises(ConfigError, match="max-rows = 100: applies to text data sets only"):
        RunConfig.from_mapping({"max-rows": 100})
    config = RunConfig.from_mapping({"task": "causal-lm", "dataset": "file", "data-path": "/d/notes.jsonl",
                                     "model-path": "/models/gpt2"})
    assert config.label == ""


def test_a_node_model_path_must_be_absolute() -> None:
    node = {"data-path": "/data/site.jsonl", "state-dir": "/state", "model-path": "/models/minilm"}
    settings = NodeSettings.from_node_config(node)
    assert settings is not None and settings.model_path == "/models/minilm"
    with pytest.raises(ConfigError, match="node-config model-path = 'models'"):
        NodeSettings.from_node_config({**node, "model-path": "models"})
    without = NodeSettings.from_node_config({k: v for k, v in node.items() if k != "model-path"})
    assert without is not None and without.model_path == ""  # a node for tables only
