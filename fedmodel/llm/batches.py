"""One forward pass and its per-example losses, shared by training and evaluation.

Each example's loss depends on that example alone (a causal LM example's loss is the mean over
its own tokens), so DP-SGD's per-example clipping bounds each example's influence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmodel.llm.source import Task

# Architectures whose position/token-type buffers have batch size 1 and are broadcast; passing them
# per example keeps Opacus' per-sample gradients well-shaped (see the project's large-model facts).
_EXPLICIT_POSITIONS = ("bert", "gpt2")
_EXPLICIT_TOKEN_TYPES = ("bert",)


def forward_logits(model: nn.Module, model_type: str, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """The logits of ``model`` on a batch (``(B, classes)`` or ``(B, T, vocab)``)."""
    rows, length = input_ids.shape
    kwargs: dict[str, torch.Tensor | bool] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if model_type in _EXPLICIT_POSITIONS:
        kwargs["position_ids"] = torch.arange(length, device=input_ids.device).repeat(rows, 1)
    if model_type in _EXPLICIT_TOKEN_TYPES:
        kwargs["token_type_ids"] = torch.zeros_like(input_ids)
    if model_type == "gpt2":
        kwargs["use_cache"] = False
    logits: torch.Tensor = model(**kwargs).logits
    return logits


def per_example_loss(task: Task, logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example losses ``(B,)`` and the number of predictions behind each (1, or the target tokens).

    Classification: cross-entropy of the label. Causal LM: mean next-token cross-entropy over the
    example's real (unpadded) target tokens; an example with no target token has loss 0 and count 0.
    """
    if task == "classification":
        if labels is None:
            raise ValueError("a classification batch needs labels")
        return F.cross_entropy(logits, labels, reduction="none"), torch.ones_like(labels, dtype=logits.dtype)
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].to(logits.dtype)
    tokens = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none") * mask
    counts = mask.sum(dim=1)
    return tokens.sum(dim=1) / counts.clamp(min=1.0), counts


def placeholder_batch(input_ids: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-row, data-free batch shaped like an empty one, for models that cannot run on 0 rows."""
    length = input_ids.shape[1]
    ids = torch.full((1, length), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    return ids, torch.ones_like(ids)
