"""The ClientApp's path for language models: LoRA fine-tuning of the owner's local base model.

:mod:`fedmodel.clients.app` hands a message here when the run's ``task`` is ``classification`` or
``causal-lm``. The owner first checks its own copy of the base model against the fingerprint the
coordinator sent (a mismatch is a refusal, before any data is touched or any privacy spent), then
loads the global adapter into its model, trains it on its texts (tokenised here, never sent) with
Opacus DP-SGD and replies with the adapter alone. Privacy is handled exactly as for tables
(:mod:`fedmodel.clients.run_privacy`, :mod:`fedmodel.clients.privacy_account`): the owner's state in ``context.state``, its
budget, the noise calibrated once; replies go out through :mod:`fedmodel.clients.replies`.

Where the texts come from: in simulation, the owner's partition of the run's data set; on a
deployed node, its own file (``data-path``: CSV, Parquet or JSON Lines with the run's
``text-column`` and, for classification, the node's ``label`` column). The base model folder is the
run's ``model-path`` in simulation and the node's own ``model-path`` in deployment. The loaded model
is kept per process: a simulation worker that serves several owners loads it once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from fedmodel.clients.privacy_account import owner_account
from fedmodel.clients.replies import error_reply, reply, run_config
from fedmodel.clients.run_privacy import REPLY_KEY, keep_privacy, privacy_record, restore_privacy
from flwr.app import ArrayRecord, Context, Message
from torch import nn

from fedmodel.config import NodeSettings, RunConfig
from fedmodel.device import resolve_device
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.llm import (
    LoraSettings,
    LoraTrainSettings,
    TextShard,
    adapter_state,
    add_lora,
    check_fingerprint,
    evaluate_task,
    load_adapter_state,
    load_base,
    read_text_shard,
    tokenize_shard,
    train_lora_round,
)
from fedmodel.llm.federated import CLASSES_KEY, FINGERPRINT_KEY, POOLING_KEY, text_split
from fedmodel.llm.pooling import POOLINGS
from fedmodel.llm.train import HEAD_LR_FACTOR
from fedmodel.privacy.randomness import owner_seed


@dataclass(frozen=True)
class TextOwner:
    """Who this node trains for (a :class:`~fedmodel.clients.replies.OwnerIdentity`), its texts and its base model."""

    name: str
    seed_id: int
    simulated: bool
    config: RunConfig
    model_path: Path
    texts: TextShard


def train(msg: Message, context: Context) -> Message:
    """Fine-tune the received adapter on this owner's texts (DP-SGD unless --no-dp); reply with the adapter."""
    try:
        owner = resolve_text_owner(msg, context)
        config = owner.config
        _threads(owner)
        account = owner_account(owner.name, config, context)  # the owner's policy, before anything else
        model, tokenizer = owner_model(msg, owner)
        shard = tokenize_shard(tokenizer, owner.texts, max_length=config.max_length)
        server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
        privacy = restore_privacy(msg, context, owner) if config.dp else None
        reservation = None
        if privacy is not None:  # calibrated once on what remains across runs, reserved before training
            account.plan(privacy, num_examples=len(shard), batch_size=config.batch_size,
                         local_epochs=config.local_epochs, rounds=config.rounds, epsilon=config.epsilon,
                         delta=config.delta, max_grad_norm=config.max_grad_norm)
            reservation = account.reserve_round(privacy, server_round)
        try:
            metrics = train_lora_round(model, shard, train_settings(config), privacy=privacy,
                                       seed=owner_seed(config.seed, owner.seed_id, server_round,
                                                       simulated=owner.simulated),  # None: the OS
                                       device=resolve_device(config.device), owner=owner.name)
        finally:
            if privacy is not None:  # reserved steps count even if training failed part-way
                keep_privacy(context, privacy)
        metrics.update(account.commit(reservation, epsilon_run=metrics.get("epsilon")))
    except Exception as exc:  # reported to the coordinator as this owner's failure
        return error_reply(msg, context, exc)
    out = reply(msg, owner, metrics, ArrayRecord(adapter_state(model)))
    if privacy is not None:  # checkpointed by the coordinator, handed back if a simulation is resumed
        out.content[REPLY_KEY] = privacy_record(privacy)
    return out


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received adapter on this owner's texts; only aggregate numbers leave."""
    try:
        owner = resolve_text_owner(msg, context)
        _threads(owner)
        owner_account(owner.name, owner.config, context)
        model, tokenizer = owner_model(msg, owner)
        shard = tokenize_shard(tokenizer, owner.texts, max_length=owner.config.max_length)
        metrics = evaluate_task(model, shard, owner.config.task, device=resolve_device(owner.config.device))
        metrics["num-examples"] = float(len(shard))
    except Exception as exc:
        return error_reply(msg, context, exc)
    return reply(msg, owner, metrics)


def resolve_text_owner(msg: Message, context: Context) -> TextOwner:
    """This node's owner: a simulated partition of the run's texts, or a deployed owner with its own file and model."""
    config = run_config(context)
    settings = NodeSettings.from_node_config(context.node_config)
    if settings is None:
        pid = int(context.node_config["partition-id"])
        partitions = int(context.node_config["num-partitions"])
        if partitions != config.clients:
            raise FedModelError(f"owner {pid}: the simulation has {partitions} nodes, the run expects {config.clients}")
        return TextOwner(str(pid), pid, True, config, Path(config.model_path), text_split(config).owner(pid))
    name = settings.owner_name
    settings.policy.check_run(name, dp=config.dp, secure_aggregation=False)  # before touching data
    problems = []
    if not settings.model_path:
        problems.append(f"owner {name}: this node has no copy of the base model; start it with "
                        "`fedmodel node start --model-path FOLDER` (a local Hugging Face model folder)")
    if config.task == "classification" and not settings.label:
        problems.append(f"owner {name}: a classification run needs the label column of this node's file; start "
                        "it with `fedmodel node start --label COLUMN`")
    if problems:
        raise ConfigError(problems)
    classes = _classes(msg) if config.task == "classification" else None
    label = settings.label if config.task == "classification" else None
    texts = _read_texts(settings.data_path, _mtime(settings.data_path), config.text_column, label, classes)
    return TextOwner(name, zlib.crc32(name.encode()), False, settings.apply(config), Path(settings.model_path), texts)


def owner_model(msg: Message, owner: TextOwner) -> tuple[nn.Module, Any]:
    """The owner's LoRA model holding the received adapter, and its tokenizer; the base is checked first."""
    record = msg.content["config"]
    expected = str(record.get(FINGERPRINT_KEY, ""))
    if not expected:
        raise FedModelError(f"owner {owner.name}: the coordinator sent no {FINGERPRINT_KEY}; refusing to train an "
                            "unchecked base model")
    check_base(owner.model_path, expected)
    config = owner.config
    num_labels = len(owner.texts.classes) if config.task == "classification" else None
    settings = LoraSettings(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets or None)
    pooling = str(record.get(POOLING_KEY, "model"))
    if pooling not in POOLINGS:
        raise FedModelError(f"owner {owner.name}: the coordinator sent {POOLING_KEY} = {pooling!r}; expected "
                            f"{' or '.join(POOLINGS)}")
    model, tokenizer = _lora_model(str(owner.model_path), config.task, num_labels, settings, config.seed, pooling)
    load_adapter_state(model, msg.content["arrays"].to_torch_state_dict())  # type: ignore[union-attr]  # a message's "arrays" is an ArrayRecord
    return model, tokenizer


def check_base(path: Path, expected: str) -> None:
    """Refuse a base model whose weights differ from the coordinator's (hashed once per process and file version)."""
    files = sorted(path.glob("*.safetensors"))
    version = (str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if _CHECKED.get(version) == expected:
        return
    check_fingerprint(path, expected)  # raises FingerprintMismatch naming both fingerprints
    _CHECKED[version] = expected


_CHECKED: dict[tuple[object, ...], str] = {}


def train_settings(config: RunConfig) -> LoraTrainSettings:
    """Local training and the privacy plan's parameters, from the run config (as this owner applies it)."""
    return LoraTrainSettings(batch_size=config.batch_size, max_physical_batch_size=config.physical_batch_size,
                             lr=config.lr, head_lr=config.head_lr or HEAD_LR_FACTOR * config.lr,
                             epochs=config.local_epochs, rounds=config.rounds, epsilon=config.epsilon,
                             delta=config.delta, max_grad_norm=config.max_grad_norm)


@lru_cache(maxsize=1)  # one base model per process: loading is slow and the weights are large
def _lora_model(path: str, task: str, num_labels: int | None, settings: LoraSettings,
                seed: int, pooling: str) -> tuple[nn.Module, Any]:
    loaded = load_base(Path(path), task, num_labels, seed=seed, pooling=pooling)  # type: ignore[arg-type]  # pooling is one of the pooling choices, checked by the config
    return add_lora(loaded.model, settings, seed=seed), loaded.tokenizer


@lru_cache(maxsize=2)
def _read_texts(path: str, mtime_ns: int, text_column: str, label: str | None,
                classes: tuple[str, ...] | None) -> TextShard:
    return read_text_shard(Path(path), text_column, label, classes=classes)


def _mtime(path: str) -> int:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return 0  # the reader names the missing file


def _classes(msg: Message) -> tuple[str, ...]:
    text = str(msg.content["config"].get(CLASSES_KEY, ""))
    if not text:
        raise FedModelError(f"the coordinator sent no {CLASSES_KEY} for a classification run")
    return tuple(text.split("\x1f"))


def _threads(owner: TextOwner) -> None:
    """A simulation worker uses the CPUs it reserved; a deployed node keeps torch's default (all its cores)."""
    if owner.simulated:
        torch.set_num_threads(owner.config.cpus_per_worker)
