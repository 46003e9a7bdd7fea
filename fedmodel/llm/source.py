"""Base models from a local Hugging Face folder only, and fingerprints to compare them across parties.

A folder is checked before any Hugging Face call: a missing folder, ``config.json``, weights
(``*.safetensors``; pickled ``*.bin`` weights are not accepted) or tokenizer files raise one
:class:`~fedmodel.llm.errors.ModelSourceError` naming the folder and the file. Loading then uses
``local_files_only=True`` with the hub's offline switches set (see :mod:`fedmodel.llm.offline`),
so no network access is ever attempted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import torch

from fedmodel.errors import ConfigError
from fedmodel.llm.errors import FingerprintMismatch, ModelSourceError
from fedmodel.llm.offline import force_offline
from fedmodel.llm.pooling import POOLINGS, use_mean_pooling

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Task = Literal["classification", "causal-lm"]
TASKS: tuple[str, ...] = get_args(Task)
TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"), ("tokenizer.model",),
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BaseModel:
    """A base model loaded from a local folder, with its tokenizer.

    Attributes
    ----------
    model
        The Hugging Face model (sequence classification or causal LM head), in train mode.
    tokenizer
        The folder's tokenizer; it has a padding token (the end-of-text token when the folder has none).
    path
        The folder it was loaded from.
    task
        ``"classification"`` or ``"causal-lm"``.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    task: Task


def check_model_folder(path: Path) -> list[Path]:
    """Check that ``path`` holds a usable model folder and return its weight files, sorted by name.

    Parameters
    ----------
    path
        The local Hugging Face model folder.

    Returns
    -------
    list of Path
        The ``*.safetensors`` files.

    Raises
    ------
    ModelSourceError
        The folder, ``config.json``, the weights or the tokenizer files are missing.
    """
    if not path.exists():
        raise ModelSourceError(f"{path}: model folder not found; expected a local Hugging Face model folder")
    if not path.is_dir():
        raise ModelSourceError(f"{path}: not a folder; expected a local Hugging Face model folder")
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path}: missing file config.json; expected the model's configuration there")
    weights = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not weights:
        pickled = sorted(p.name for p in path.glob("*.bin"))
        note = f" (found {', '.join(pickled)}: pickled weights are not loaded)" if pickled else ""
        raise ModelSourceError(f"{path}: missing file *.safetensors{note}; expected the model's weights")
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        expected = " or ".join("+".join(names) for names in TOKENIZER_FILE_SETS)
        raise ModelSourceError(f"{path}: missing tokenizer files; expected {expected}")
    return weights


def load_base(path: Path, task: Task, num_labels: int | None, *, seed: int = 0,
              pooling: str = "model") -> BaseModel:
    """Load a base model and its tokenizer from a local folder, never from the network.

    Parameters
    ----------
    path
        The local Hugging Face model folder (``config.json``, ``*.safetensors``, tokenizer files).
    task
        ``"classification"`` (a sequence classification head with ``num_labels`` outputs) or
        ``"causal-lm"`` (a language-modelling head; ``num_labels`` must be None).
    num_labels
        Number of classes for classification, at least 2. A head the folder lacks, or one of
        another size, is initialised afresh (seeded), to be trained with the adapter.
    seed
        Seeds the initialisation of any head the folder lacks, so every party builds the same one.
    pooling
        Classification only: ``model`` (the architecture's own head) or ``mean`` (the mean of the
        token states, see :mod:`fedmodel.llm.pooling`).

    Returns
    -------
    BaseModel
        The model in train mode and its tokenizer.

    Raises
    ------
    ConfigError
        ``task`` or ``num_labels`` is invalid.
    ModelSourceError
        The folder or one of its files is missing, or Hugging Face cannot load it.
    """
    _check_task(task, num_labels)
    if pooling not in POOLINGS:  # before any file is read or model built
        raise ConfigError([f"pooling = {pooling!r}: expected one of {', '.join(POOLINGS)}"])
    check_model_folder(path)
    force_offline()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if task == "classification":
                model = AutoModelForSequenceClassification.from_pretrained(  # a head of another size is new
                    path, num_labels=num_labels, ignore_mismatched_sizes=True, use_safetensors=True,
                    local_files_only=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelSourceError(f"{path}: cannot load the model folder: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSourceError(f"{path}: the tokenizer has neither a padding nor an end-of-text token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if task == "classification" and pooling == "mean":
        use_mean_pooling(model)
    model.train()
    return BaseModel(model, tokenizer, path, task)


def _check_task(task: str, num_labels: int | None) -> None:
    if task not in TASKS:
        raise ConfigError([f"task = {task!r}: expected one of {', '.join(TASKS)}"])
    if task == "classification" and (num_labels is None or num_labels < 2):
        raise ConfigError([f"num_labels = {num_labels}: a classification model needs at least 2 labels"])
    if task == "causal-lm" and num_labels is not None:
        raise ConfigError([f"num_labels = {num_labels}: a causal-lm model has no labels; pass None"])


def fingerprint(path: Path) -> str:
    """SHA-256 (hex) over the folder's ``*.safetensors`` files: for each, sorted by name, its name, size and bytes.

    Parameters
    ----------
    path
        The local model folder.

    Returns
    -------
    str
        64 hex digits; equal on every party that holds the same weight files.

    Raises
    ------
    ModelSourceError
        The folder or its weights are missing.
    """
    if not path.is_dir():
        raise ModelSourceError(f"{path}: model folder not found; expected a local Hugging Face model folder")
    weights = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if not weights:
        raise ModelSourceError(f"{path}: missing file *.safetensors; expected the model's weights")
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.name.encode("utf-8") + b"\0")
        digest.update(file.stat().st_size.to_bytes(8, "big"))
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def check_fingerprint(path: Path, expected: str) -> str:
    """Refuse a base model whose weights differ from the expected ones.

    Parameters
    ----------
    path
        The local model folder.
    expected
        The fingerprint announced by the coordinator (see :func:`fingerprint`).

    Returns
    -------
    str
        The folder's fingerprint (equal to ``expected``).

    Raises
    ------
    FingerprintMismatch
        The fingerprints differ; the message names both.
    """
    actual = fingerprint(path)
    if actual != expected.strip().lower():
        raise FingerprintMismatch(path, expected, actual)
    return actual
