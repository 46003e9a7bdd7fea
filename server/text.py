"""The coordinator's path for language models: federated LoRA fine-tuning of a local base model.

:func:`fedmodel.server.app.main` calls :func:`run_text` when ``task`` is ``classification`` or ``causal-lm``.
The base weights never travel. The coordinator fingerprints its own copy, and every message carries
that fingerprint (each owner refuses a base that differs) and the global adapter: the LoRA matrices
and, for classification, the head, seeded so every party starts from the same one. Flower's
strategies aggregate the adapter like any ArrayRecord (FedAvg: the example-weighted mean, after the
usual screening of each reply); the coordinator evaluates the adapted model on its held-out texts
after every round and writes the final adapter to ``adapter.safetensors``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from fedmodel.server.recorder import RunRecorder, owner_of
from fedmodel.server.strategy import aggregator, build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from fedmodel.config import RunConfig
from fedmodel.device import resolve_device
from fedmodel.llm import (
    LoraSettings,
    adapter_state,
    add_lora,
    evaluate_task,
    fingerprint,
    load_adapter_state,
    load_base,
    payload_sizes,
    save_adapter,
    tokenize_shard,
)
from fedmodel.llm.federated import CLASSES_KEY, FINGERPRINT_KEY, POOLING_KEY, text_split
from fedmodel.llm.lora import unwrap
from fedmodel.llm.pooling import resolve_pooling
from fedmodel.report.run_folder import RunFolder

log = logging.getLogger("fedmodel.server")
ADAPTER_FILE = "adapter.safetensors"
_NOT_CLASSIFICATION = {"accuracy": math.nan, "precision": math.nan, "recall": math.nan, "f1": math.nan}


def lora_settings(config: RunConfig) -> LoraSettings:
    """The run's LoRA settings (identical at the coordinator and every owner)."""
    return LoraSettings(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets or None)


def run_text(grid: Grid, config: RunConfig, folder: RunFolder, recorder: RunRecorder) -> dict[str, Any]:
    """Run the federated fine-tuning, write ``adapter.safetensors`` and return the run's report.

    The report is the recorder's, with ``task``, ``language_model`` (base, fingerprint, LoRA
    settings, parameter counts) and ``payload`` (bytes each owner sent and received per round,
    against the full model's bytes) added.
    """
    torch.set_num_threads(os.cpu_count() or 1)  # evaluation runs while every owner waits
    base_path = Path(config.model_path)
    base_fingerprint = fingerprint(base_path)
    split = text_split(config)
    num_labels = len(split.classes) if config.task == "classification" else None
    pooling = resolve_pooling(config.pooling, base_path) if config.task == "classification" else "model"
    base = load_base(base_path, config.task, num_labels, seed=config.seed, pooling=pooling)  # type: ignore[arg-type]  # pooling is one of the pooling choices, checked by the config
    settings = lora_settings(config)
    model = add_lora(base.model, settings, seed=config.seed)
    test = tokenize_shard(base.tokenizer, split.test(), max_length=config.max_length)
    device = resolve_device(config.device)
    perplexity: dict[int, float] = {}

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_adapter_state(model, arrays.to_torch_state_dict())
        metrics = evaluate_task(model, test, config.task, device=device)
        if "perplexity" in metrics:
            perplexity[server_round] = metrics["perplexity"]
        recorder.central_evaluation(server_round, {**_NOT_CLASSIFICATION, **metrics})
        return MetricRecord({k: v for k, v in metrics.items() if math.isfinite(v)})

    shared = {FINGERPRINT_KEY: base_fingerprint, CLASSES_KEY: "\x1f".join(split.classes), POOLING_KEY: pooling}
    strategy = build_strategy(config, recorder)
    cast(FedAvg, aggregator(strategy)).fraction_evaluate = 0.0  # the coordinator evaluates; owners' passes add a third
    meter = MeteredGrid(grid)
    log.info("text run: %s, base %s (fingerprint %s), %d test texts", config.task, base_path, base_fingerprint[:12],
             len(test))
    result = strategy.start(
        grid=meter,  # type: ignore[arg-type]  # the meter wraps the Grid and has its methods
        initial_arrays=ArrayRecord(adapter_state(model)), num_rounds=config.rounds,
        train_config=ConfigRecord({"lr": config.lr, **shared}), evaluate_config=ConfigRecord(shared),  # type: ignore[arg-type]  # dict is invariant: str values are valid config values
        evaluate_fn=central_eval,
    )
    load_adapter_state(model, result.arrays.to_torch_state_dict())
    save_adapter(model, folder.path / ADAPTER_FILE, settings, base_fingerprint=base_fingerprint, pooling=pooling)
    report = recorder.report("completed")
    report.update(text_report(config, model, base_fingerprint, split.classes, meter, perplexity))
    report["language_model"]["pooling"] = pooling
    for row in report["rounds"]:
        row["perplexity"] = perplexity.get(row["round"])
    if report.get("final") is not None and perplexity:
        report["final"]["perplexity"] = perplexity[max(perplexity)]
    return report


def text_report(config: RunConfig, model: nn.Module, base_fingerprint: str, classes: tuple[str, ...],
                meter: MeteredGrid, perplexity: dict[int, float]) -> dict[str, Any]:
    """The report's language-model sections: what was trained and what travelled."""
    sizes = payload_sizes(model)
    inner = unwrap(model)
    trainable = sum(p.numel() for p in inner.parameters() if p.requires_grad)
    total = sum(p.numel() for p in inner.get_base_model().parameters())  # type: ignore[operator]  # a peft model's get_base_model
    uploads = [u["bytes_sent"] for u in meter.rows]
    return {
        "task": config.task, "model": "lora", "data_quality": None,
        "language_model": {
            "base": config.model_path, "fingerprint": base_fingerprint,
            "architecture": str(getattr(inner.config, "model_type", "")),
            "parameters": total, "trainable_parameters": trainable,
            "lora": {"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                     "targets": sorted(inner.peft_config["default"].target_modules)},  # type: ignore[index,union-attr]  # peft_config maps adapter names to LoraConfig
            "max_length": config.max_length, "classes": list(classes), "adapter_file": ADAPTER_FILE,
            "initial_perplexity": perplexity.get(0),
        },
        "payload": {
            "adapter_bytes": sizes.adapter_bytes, "full_model_bytes": sizes.full_model_bytes,
            "adapter_ratio": sizes.ratio,
            "max_bytes_sent_per_owner_per_round": max(uploads, default=None),
            "max_ratio_to_full_model": max(uploads, default=0) / sizes.full_model_bytes if uploads else None,
            "owners": meter.rows,
            "note": "bytes_sent: the array bytes of an owner's reply to the coordinator as Flower serialises them "
                    "(tensor bytes plus a small header per tensor); bytes_received: the same for the adapter it "
                    "was sent; full_model_bytes: the base model's tensors, what full fine-tuning would send.",
        },
    }


def array_bytes(msg: Message) -> int:
    """Bytes of the arrays a message carries, as Flower serialises them."""
    return sum(len(array.data) for record in msg.content.array_records.values() for array in record.values())


@dataclass
class MeteredGrid:
    """A Grid that records, per train round and owner, the array bytes received and sent (all else delegated)."""

    grid: Grid
    rows: list[dict[str, Any]] = field(default_factory=list)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's send_and_receive, with the train replies metered and all replies in owner order.

        Aggregation then sums the updates in the same order whatever order they arrived in.
        """
        messages = list(messages)
        replies = sorted(self.grid.send_and_receive(messages, timeout=timeout), key=_reply_order)
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if train:
            sent = {m.metadata.dst_node_id: array_bytes(m) for m in train}
            server_round = int(train[0].content["config"]["server-round"])  # type: ignore[arg-type]  # Flower types record values as a union; this one is a number or a list
            for reply in replies:
                if reply.has_error():
                    continue
                try:
                    owner: int | str = owner_of(reply)
                except (KeyError, TypeError, ValueError, StopIteration):
                    owner = f"node {reply.metadata.src_node_id}"
                full = array_bytes(reply)
                self.rows.append({"round": server_round, "owner": owner, "bytes_sent": full,
                                  "bytes_received": sent.get(reply.metadata.src_node_id)})
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def _reply_order(reply: Message) -> tuple[int, int, str]:
    """Owners first, in their order (numbers, then names), then replies that name none (errors) by node."""
    try:
        owner = owner_of(reply) if not reply.has_error() else None
    except (KeyError, TypeError, ValueError, StopIteration):
        owner = None
    if owner is None:
        return (2, int(reply.metadata.src_node_id), "")
    return (0, owner, "") if isinstance(owner, int) else (1, 0, owner)
