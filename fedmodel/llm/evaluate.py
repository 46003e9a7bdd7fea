"""Evaluation of a (LoRA) model on a tokenised shard: classification metrics, or next-token loss and perplexity."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedmodel.llm.batches import forward_logits, per_example_loss
from fedmodel.llm.encoding import TokenizedShard
from fedmodel.llm.lora import unwrap
from fedmodel.metrics import classification_metrics


@torch.no_grad()
def evaluate_classification(model: nn.Module, shard: TokenizedShard, *, device: torch.device,
                            batch_size: int = 64) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` and macro ``precision``, ``recall``, ``f1``.

    Parameters
    ----------
    model
        A sequence classification model (plain, peft or Opacus-wrapped).
    shard
        Tokenised examples with labels.
    device
        Where to run.
    batch_size
        Examples per forward pass.

    Returns
    -------
    dict of str to float
        NaN metrics for an empty shard.
    """
    if shard.labels is None:
        raise ValueError("evaluate_classification needs a shard with labels")
    model.to(device)
    model.eval()
    model_type = str(getattr(unwrap(model).config, "model_type", ""))
    loss, preds = 0.0, []
    for start in range(0, len(shard), batch_size):
        ids = shard.input_ids[start:start + batch_size].to(device)
        mask = shard.attention_mask[start:start + batch_size].to(device)
        labels = shard.labels[start:start + batch_size].to(device)
        logits = forward_logits(model, model_type, ids, mask)
        losses, _ = per_example_loss("classification", logits, ids, mask, labels)
        loss += float(losses.sum())
        preds.append(logits.argmax(dim=1).cpu().numpy())
    y_pred = np.concatenate(preds) if preds else np.empty(0, np.int64)
    metrics = classification_metrics(shard.labels.numpy(), y_pred)
    metrics["loss"] = loss / len(shard) if len(shard) else math.nan
    return metrics


@torch.no_grad()
def evaluate_causal_lm(model: nn.Module, shard: TokenizedShard, *, device: torch.device,
                       batch_size: int = 64) -> dict[str, float]:
    """Next-token ``loss`` (mean cross-entropy over all real target tokens) and ``perplexity`` = exp(loss).

    Parameters
    ----------
    model
        A causal LM (plain, peft or Opacus-wrapped).
    shard
        Tokenised examples.
    device
        Where to run.
    batch_size
        Examples per forward pass.

    Returns
    -------
    dict of str to float
        ``loss``, ``perplexity`` and ``tokens`` (NaN loss when there is no target token).
    """
    model.to(device)
    model.eval()
    model_type = str(getattr(unwrap(model).config, "model_type", ""))
    total, tokens = 0.0, 0.0
    for start in range(0, len(shard), batch_size):
        ids = shard.input_ids[start:start + batch_size].to(device)
        mask = shard.attention_mask[start:start + batch_size].to(device)
        logits = forward_logits(model, model_type, ids, mask)
        losses, counts = per_example_loss("causal-lm", logits, ids, mask, None)
        total += float((losses * counts).sum())
        tokens += float(counts.sum())
    loss = total / tokens if tokens else math.nan
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else math.nan, "tokens": tokens}


def evaluate_task(model: nn.Module, shard: TokenizedShard, task: str, *, device: torch.device,
                  batch_size: int = 64) -> dict[str, float]:
    """The task's metrics: :func:`evaluate_classification`'s, or ``loss`` and ``perplexity`` for a causal LM."""
    if task == "classification":
        return evaluate_classification(model, shard, device=device, batch_size=batch_size)
    metrics = evaluate_causal_lm(model, shard, device=device, batch_size=batch_size)
    return {"loss": metrics["loss"], "perplexity": metrics["perplexity"]}
