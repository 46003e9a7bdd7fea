"""Checkpoints: exact round trips, every kind of damage named, crashes between writes leave the last one valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fedmodel.server.checkpoint as checkpoint
import pytest
import torch
from fedmodel.server.checkpoint import latest_checkpoint, load_checkpoint, write_checkpoint

from fedmodel.errors import CheckpointError


def arrays(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(10, 64, generator=gen), "fc.bias": torch.randn(10, generator=gen),
            "steps": torch.tensor([seed], dtype=torch.int64)}


def state(server_round: int) -> dict[str, Any]:
    return {
        "round": server_round, "seed": 42, "numpy_rng": {"bit_generator": "PCG64", "state": [1, 2, 3]},
        "torch_rng": list(range(16)), "metrics": [{"round": r, "accuracy": 0.5 + r / 100} for r in range(server_round)],
        "owners": {"0": {"steps": 12, "history": [[1.1, 0.01, 12]]}}, "config": {"clients": 3, "strategy": "fedadam"},
    }


def write(folder: Path, server_round: int, **kwargs: Any) -> Path:
    return write_checkpoint(folder, server_round=server_round, arrays=arrays(server_round),
                            strategy_state={"m_t/fc.bias": torch.full((10,), float(server_round))},
                            state=state(server_round), **kwargs)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = write(tmp_path, 3)
    assert path == tmp_path / "checkpoint" / "round-3"
    loaded = load_checkpoint(path)
    assert loaded.server_round == 3 and loaded.path == path
    assert loaded.arrays.keys() == arrays(3).keys()
    for key, value in arrays(3).items():
        assert torch.equal(loaded.arrays[key], value) and loaded.arrays[key].dtype == value.dtype
    assert torch.equal(loaded.strategy_state["m_t/fc.bias"], torch.full((10,), 3.0))
    assert loaded.state == state(3)


def test_empty_strategy_state_round_trips(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, server_round=1, arrays=arrays(1), strategy_state={}, state={})
    assert load_checkpoint(path).strategy_state == {}


def test_latest_is_the_newest_and_older_ones_are_pruned(tmp_path: Path) -> None:
    for server_round in (1, 2, 3):
        write(tmp_path, server_round, keep=2)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint" / "round-3"
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["round-2", "round-3"]


def test_no_checkpoint_gives_none(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None


def test_rewriting_an_older_round_drops_the_later_ones(tmp_path: Path) -> None:
    for server_round in (1, 2, 3):
        write(tmp_path, server_round)
    write(tmp_path, 2)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint" / "round-2"
    assert load_checkpoint(tmp_path / "checkpoint" / "round-2").state == state(2)


@pytest.mark.parametrize("name", ["model.safetensors", "strategy.safetensors", "state.json", "manifest.json"])
def test_truncated_file_is_named(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, 1)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=name) as info:
        load_checkpoint(path)
    if name != "manifest.json":
        assert "truncated" in str(info.value)
    else:
        assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize("name", ["model.safetensors", "strategy.safetensors", "state.json"])
def test_edited_file_is_named(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, 1)
    data = bytearray((path / name).read_bytes())
    data[-2] ^= 0x01  # same size, one bit changed
    (path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name}: checksum mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["model.safetensors", "strategy.safetensors", "state.json", "manifest.json"])
def test_missing_file_is_named(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, 1)
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing"):
        load_checkpoint(path)


def test_edited_manifest_is_caught(tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["tensors"]["model.safetensors"]["fc.bias"]["shape"] = [11]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'fc.bias' is float32 \[10\]"):
        load_checkpoint(path)


def test_state_that_is_not_json_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="state.json: the run state is not JSON-serialisable"):
        write_checkpoint(tmp_path, server_round=1, arrays=arrays(1), strategy_state={}, state={"x": object()})
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("crash_after", [0, 1, 2, 3])
def test_crash_between_file_writes_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              crash_after: int) -> None:
    """A crash after ``crash_after`` of the four files of round 2 (manifest last): round 1 stays the latest."""
    write(tmp_path, 1)
    real = checkpoint.atomic_write
    written: list[str] = []

    def crashing(path: Path, data: bytes, **kwargs: Any) -> None:
        if len(written) == crash_after:
            raise KeyboardInterrupt("simulated crash")
        written.append(path.name)
        real(path, data, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write", crashing)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, 2)
    monkeypatch.setattr(checkpoint, "atomic_write", real)
    assert "manifest.json" not in written
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "checkpoint" / "round-1"
    assert load_checkpoint(latest).state == state(1)
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_checkpoint(tmp_path / "checkpoint" / "round-2")
    write(tmp_path, 2)  # the next write of that round completes it
    assert load_checkpoint(tmp_path / "checkpoint" / "round-2").state == state(2)


def test_crash_while_overwriting_a_round_never_mixes_generations(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, 1)
    write(tmp_path, 2)
    real = checkpoint.atomic_write

    def crashing(path: Path, data: bytes, **kwargs: Any) -> None:
        if path.name == "strategy.safetensors":
            raise KeyboardInterrupt("simulated crash")
        real(path, data, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_write", crashing)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, server_round=2, arrays=arrays(99), strategy_state={}, state={})
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint" / "round-1"
