"""Crash-safe checkpoints of a run: the global model, the strategy's state and everything else as JSON.

A checkpoint is a folder ``<run folder>/checkpoint/round-N/`` holding

* ``model.safetensors``: the global model's arrays after round N;
* ``strategy.safetensors``: the strategy's own tensors (FedAdam's moments, ...), possibly none;
* ``state.json``: the rest (seeds, RNG states, metrics so far, per-owner privacy state, the config);
* ``manifest.json``: the round, the size and SHA-256 of each file above and the name, shape and dtype
  of every tensor. It is written last, so a folder without it is an unfinished write, never a checkpoint.

Every file is written to a temporary name, fsynced, renamed and its folder fsynced
(:func:`fedmodel.fsio.atomic_write`): a crash at any point leaves the previous checkpoint valid.
Nothing is pickled; reading a checkpoint verifies everything before returning any of it and fails
with a :class:`~fedmodel.errors.CheckpointError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from fedmodel.errors import CheckpointError
from fedmodel.fsio import atomic_write

CHECKPOINT_DIR = "checkpoint"
MODEL_FILE = "model.safetensors"
STRATEGY_FILE = "strategy.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
FORMAT = "fedmodel-checkpoint"
VERSION = 1
_TENSOR_FILES = (MODEL_FILE, STRATEGY_FILE)
_DATA_FILES = (MODEL_FILE, STRATEGY_FILE, STATE_FILE)
_PREFIX = "round-"


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: the state of a run after ``server_round`` rounds."""

    path: Path
    server_round: int
    arrays: dict[str, torch.Tensor]
    strategy_state: dict[str, torch.Tensor]
    state: dict[str, Any]


def checkpoint_path(run_folder: Path, server_round: int) -> Path:
    """The folder of round ``server_round``'s checkpoint in a run folder."""
    return run_folder / CHECKPOINT_DIR / f"{_PREFIX}{server_round}"


def write_checkpoint(
    folder: Path, *, server_round: int, arrays: Mapping[str, torch.Tensor],
    strategy_state: Mapping[str, torch.Tensor], state: Mapping[str, Any], keep: int = 2,
) -> Path:
    """Write round ``server_round``'s checkpoint into run folder ``folder`` and return its path.

    ``state`` must be JSON-serialisable (lists, dicts, str, int, float, bool, None). Afterwards only
    the newest ``keep`` checkpoints are kept, and checkpoints of later rounds (left by a run that was
    resumed from an older one) are removed. Raises CheckpointError, before touching the disk if the
    input cannot be stored, and naming the file if writing fails.
    """
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise CheckpointError(f"checkpoint round must be an integer >= 0, got {server_round!r}")
    if keep < 1:
        raise CheckpointError(f"checkpoint keep must be >= 1, got {keep!r}")
    model, model_meta = _encode_tensors(arrays, MODEL_FILE)
    strategy, strategy_meta = _encode_tensors(strategy_state, STRATEGY_FILE)
    try:
        state_bytes = json.dumps(dict(state), indent=1, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{STATE_FILE}: the run state is not JSON-serialisable ({exc})") from None
    payloads = {MODEL_FILE: model, STRATEGY_FILE: strategy, STATE_FILE: state_bytes}
    manifest = {
        "format": FORMAT, "version": VERSION, "round": server_round,
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in payloads.items()},
        "tensors": {MODEL_FILE: model_meta, STRATEGY_FILE: strategy_meta},
    }
    target = checkpoint_path(folder, server_round)
    try:
        _prepare(target)
        for name, data in payloads.items():
            atomic_write(target / name, data)
        atomic_write(target / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{exc.filename or target}: cannot write checkpoint ({exc.strerror or exc})") from None
    _prune(target.parent, server_round, keep)
    return target


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read and verify the checkpoint in ``folder`` (a ``round-N`` folder); raise CheckpointError if it is bad.

    Checked: the manifest exists and is well formed, every file exists with the size and SHA-256 the
    manifest records, the tensor files parse and hold exactly the recorded names, shapes and dtypes,
    and state.json is a JSON object.
    """
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path}: missing; {folder} is not a complete checkpoint (a write did not finish, "
            "or this is not a checkpoint folder)"
        )
    manifest = _check_manifest(_parse_json(_read(manifest_path), manifest_path), manifest_path)
    data = {name: _verified_bytes(folder / name, manifest["files"][name]) for name in _DATA_FILES}
    tensors = {name: _decode_tensors(folder / name, data[name], manifest["tensors"][name]) for name in _TENSOR_FILES}
    state = _parse_json(data[STATE_FILE], folder / STATE_FILE)
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder / STATE_FILE}: expected a JSON object, got {type(state).__name__}")
    return Checkpoint(folder, manifest["round"], tensors[MODEL_FILE], tensors[STRATEGY_FILE], state)


def latest_checkpoint(run_folder: Path) -> Path | None:
    """The newest complete checkpoint (one with a manifest) of a run folder, or None if there is none.

    Folders without a manifest are unfinished writes and are skipped. The result is not verified yet:
    :func:`load_checkpoint` does that.
    """
    for _, path in sorted(_round_folders(run_folder / CHECKPOINT_DIR), reverse=True):
        if (path / MANIFEST_FILE).is_file():
            return path
    return None


# ---------------------------------------------------------------------------------------------- writing
def _encode_tensors(tensors: Mapping[str, torch.Tensor], name: str) -> tuple[bytes, dict[str, Any]]:
    clean: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: {key!r} is a {type(value).__name__}, expected a torch.Tensor")
        clean[key] = value.detach().cpu().contiguous().clone()
    meta = {key: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)} for key, t in clean.items()}
    try:
        return save_tensors(clean), meta
    except Exception as exc:  # safetensors' own errors: unsupported dtype, ...
        raise CheckpointError(f"{name}: cannot store the tensors as safetensors ({exc})") from None


def _prepare(target: Path) -> None:
    """Create the round's folder; make an older checkpoint of the same round incomplete before overwriting it."""
    new = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    if new:
        _fsync_dir(target.parent)
        _fsync_dir(target.parent.parent)
    manifest = target / MANIFEST_FILE
    if manifest.exists():
        manifest.unlink()
        _fsync_dir(target)
    for stale in target.glob(".*.tmp"):  # temporaries of a write that crashed
        stale.unlink(missing_ok=True)


def _prune(checkpoints: Path, current: int, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints up to ``current``; remove the rest."""
    kept = 0
    for number, path in sorted(_round_folders(checkpoints), reverse=True):
        complete = (path / MANIFEST_FILE).is_file()
        if number <= current and complete and kept < keep:
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- reading
def _round_folders(checkpoints: Path) -> list[tuple[int, Path]]:
    if not checkpoints.is_dir():
        return []
    out = []
    for path in checkpoints.iterdir():
        number = path.name[len(_PREFIX):]
        if path.is_dir() and path.name.startswith(_PREFIX) and number.isdigit():
            out.append((int(number), path))
    return out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def _check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}")

    if not isinstance(manifest, dict):
        raise bad("expected a JSON object")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise bad(f"not a {FORMAT} version {VERSION} manifest "
                  f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})")
    number = manifest.get("round")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise bad(f"round = {number!r}: expected an integer >= 0")
    files, tensors = manifest.get("files"), manifest.get("tensors")
    if not isinstance(files, dict) or not isinstance(tensors, dict):
        raise bad("'files' and 'tensors' must be JSON objects")
    for name in _DATA_FILES:
        entry = files.get(name)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("bytes"), int) and not isinstance(entry.get("bytes"), bool)):
            raise bad(f"no size and sha256 recorded for {name}")
    for name in _TENSOR_FILES:
        entries = tensors.get(name)
        if not isinstance(entries, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list)
            for e in entries.values()
        ):
            raise bad(f"no tensor names, shapes and dtypes recorded for {name}")
    return manifest


def _verified_bytes(path: Path, entry: Mapping[str, Any]) -> bytes:
    data = _read(path)
    expected = entry["bytes"]
    if len(data) < expected:
        raise CheckpointError(f"{path}: truncated ({len(data)} bytes, the manifest records {expected})")
    if len(data) != expected:
        raise CheckpointError(f"{path}: {len(data)} bytes, the manifest records {expected} (the file was changed)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"{path}: checksum mismatch (sha256 {digest}, the manifest records {entry['sha256']}); "
            "the file was edited or damaged"
        )
    return data


def _decode_tensors(path: Path, data: bytes, expected: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors raises its own error types on malformed input
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: tensor names differ from the manifest (missing {missing}, unexpected {extra})")
    for key, tensor in tensors.items():
        got = {"dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape)}
        want = {"dtype": expected[key]["dtype"], "shape": list(expected[key]["shape"])}
        if got != want:
            raise CheckpointError(f"{path}: tensor {key!r} is {got['dtype']} {got['shape']}, the manifest records "
                                  f"{want['dtype']} {want['shape']}")
    return dict(tensors)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
