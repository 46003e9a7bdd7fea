"""Tokenisation at the owner, with the base model's own tokenizer, into fixed-length tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fedmodel.errors import ConfigError
from fedmodel.llm.text import TextShard

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenizedShard:
    """Token ids padded (right) to a common length, with their attention mask and optional labels.

    Attributes
    ----------
    input_ids, attention_mask
        int64 tensors of shape ``(n, max_length)``.
    labels
        int64 tensor of shape ``(n,)`` (class indices), or None for language modelling.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, indices: torch.Tensor) -> TokenizedShard:
        """The rows at ``indices``."""
        labels = None if self.labels is None else self.labels[indices]
        return TokenizedShard(self.input_ids[indices], self.attention_mask[indices], labels)


def tokenize_shard(tokenizer: PreTrainedTokenizerBase, shard: TextShard, *, max_length: int) -> TokenizedShard:
    """Tokenise every text, truncated and right-padded to ``max_length`` tokens.

    Parameters
    ----------
    tokenizer
        The base model's tokenizer (see :func:`~fedmodel.llm.source.load_base`); it needs a padding token.
    shard
        The owner's texts and labels.
    max_length
        Tokens per example, at least 2.

    Returns
    -------
    TokenizedShard
    """
    if max_length < 2:
        raise ConfigError([f"max_length = {max_length}: expected at least 2 tokens"])
    tokenizer.padding_side = "right"
    encoded = tokenizer(list(shard.texts), padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
    labels = None if shard.labels is None else torch.as_tensor(shard.labels, dtype=torch.long)
    return TokenizedShard(encoded["input_ids"].long(), encoded["attention_mask"].long(), labels)
