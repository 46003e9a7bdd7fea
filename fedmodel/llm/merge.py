"""Merge a trained adapter into its base model, giving a plain Hugging Face folder for inference."""

from __future__ import annotations

from pathlib import Path

from fedmodel.llm.adapter_file import read_adapter
from fedmodel.llm.errors import ModelSourceError
from fedmodel.llm.lora import add_lora, load_adapter_state
from fedmodel.llm.source import check_fingerprint, load_base


def merge_adapter(base_path: Path, adapter_file: Path, out_dir: Path) -> Path:
    """Write base model + adapter, merged, as a model folder (safetensors weights and the tokenizer).

    Parameters
    ----------
    base_path
        The local base model folder the adapter was trained on.
    adapter_file
        A file written by :func:`~fedmodel.llm.adapter_file.save_adapter`.
    out_dir
        The folder to create; it must not exist or be empty.

    Returns
    -------
    Path
        ``out_dir``, loadable with :func:`~fedmodel.llm.source.load_base` or ``from_pretrained``. A head
        trained on mean pooling needs ``load_base(out_dir, ..., pooling="mean")`` (or ``auto``: the folder's
        ``config.json`` declares it as ``fedmodel_pooling``); plain ``from_pretrained`` would read the
        first token's pooler instead.

    Raises
    ------
    ModelSourceError
        A folder or file is missing, ``out_dir`` is not empty, or the base fingerprint differs.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelSourceError(f"{out_dir}: output folder exists and is not empty; expected a new folder")
    adapter = read_adapter(adapter_file)
    if adapter.base_fingerprint is not None:
        check_fingerprint(base_path, adapter.base_fingerprint)
    base = load_base(base_path, adapter.task, adapter.num_labels, pooling=adapter.pooling)
    model = add_lora(base.model, adapter.settings)
    load_adapter_state(model, adapter.state)
    merged = model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    base.tokenizer.save_pretrained(out_dir)
    return out_dir
