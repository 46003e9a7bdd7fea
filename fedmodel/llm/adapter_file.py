"""A self-describing adapter file: the adapter state in safetensors, with what is needed to rebuild it.

The metadata holds the task, the number of labels, the LoRA settings and the base model's
fingerprint, so :func:`~fedmodel.llm.merge.merge_adapter` needs only the base folder and this file.
Reading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmodel.llm.errors import ModelSourceError
from fedmodel.llm.lora import LoraSettings, adapter_state, task_of, unwrap
from fedmodel.llm.pooling import Pooling
from fedmodel.llm.source import TASKS, Task

FORMAT = "fedmodel-lora-1"


@dataclass(frozen=True)
class AdapterFile:
    """The content of an adapter file."""

    state: dict[str, torch.Tensor]
    settings: LoraSettings
    task: Task
    num_labels: int | None
    base_fingerprint: str | None
    pooling: Pooling = "model"


def save_adapter(model: nn.Module, path: Path, settings: LoraSettings, *, base_fingerprint: str | None,
                 pooling: Pooling = "model") -> Path:
    """Write the model's adapter state and its description to ``path`` (safetensors).

    Parameters
    ----------
    model
        A model from :func:`~fedmodel.llm.lora.add_lora`, possibly wrapped by Opacus.
    path
        The file to write.
    settings
        The LoRA settings the adapter was built with.
    base_fingerprint
        The base model's fingerprint (see :func:`~fedmodel.llm.source.fingerprint`), checked when merging.
    pooling
        The pooling the head was trained on (see :mod:`fedmodel.llm.pooling`), restored when merging.

    Returns
    -------
    Path
        ``path``.
    """
    from safetensors.torch import save_file

    task = task_of(model)
    config: Any = unwrap(model).config
    num_labels = int(config.num_labels) if task == "classification" else None
    metadata = {
        "format": FORMAT, "task": task, "num-labels": json.dumps(num_labels),
        "rank": str(settings.rank), "alpha": str(settings.alpha), "dropout": repr(float(settings.dropout)),
        "target-modules": json.dumps(list(settings.target_modules) if settings.target_modules else None),
        "base-fingerprint": base_fingerprint or "", "pooling": pooling,
    }
    state = {k: v.contiguous() for k, v in adapter_state(model).items()}
    save_file(state, str(path), metadata=metadata)
    return path


def read_adapter(path: Path) -> AdapterFile:
    """Read an adapter file written by :func:`save_adapter`.

    Raises
    ------
    ModelSourceError
        The file is missing, not safetensors, or lacks the fedmodel description.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelSourceError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError) as exc:
        raise ModelSourceError(f"{path}: not a safetensors adapter file ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("task") not in TASKS:
        raise ModelSourceError(f"{path}: no fedmodel adapter description (format {meta.get('format')!r}); "
                               f"expected a file written by save_adapter")
    try:
        targets = json.loads(meta["target-modules"])
        settings = LoraSettings(int(meta["rank"]), int(meta["alpha"]), float(meta["dropout"]),
                                tuple(targets) if targets else None)
        num_labels = json.loads(meta["num-labels"])
    except (KeyError, ValueError) as exc:
        raise ModelSourceError(f"{path}: adapter description is incomplete ({exc})") from None
    task: Task = "classification" if meta["task"] == "classification" else "causal-lm"
    pooling: Pooling = "mean" if meta.get("pooling") == "mean" else "model"  # files from before pooling: model
    return AdapterFile(state, settings, task, num_labels, meta.get("base-fingerprint") or None, pooling)
