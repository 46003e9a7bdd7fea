"""Shared fixtures: tiny random Hugging Face models (BERT classifier, GPT-2 LM) with a word-level tokenizer, saved
to disk, and random texts over their vocabulary (the large-model tests, the ClientApp's and the integration tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import fedmodel.llm  # noqa: F401  (forces offline mode before transformers is imported)

WORDS = [f"w{i}" for i in range(95)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + WORDS
HIDDEN, LAYERS, HEADS, SEQ = 32, 2, 2, 16


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertForSequenceClassification (2 labels) folder."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=64, max_position_embeddings=SEQ * 2,
                        pad_token_id=0, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    _save_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT2LMHeadModel folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(VOCAB), n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=SEQ * 2,
                        bos_token_id=3, eos_token_id=3, pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    _save_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def random_texts() -> Callable[..., list[str]]:
    """A function giving ``n`` reproducible random word sequences of ``shortest`` to ``length`` words."""

    def make(n: int, seed: int = 0, length: int = SEQ, shortest: int = 3) -> list[str]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(n):
            k = int(torch.randint(shortest, length + 1, (1,), generator=g))
            out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
        return out

    return make
