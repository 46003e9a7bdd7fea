"""Checkpoints after every round and what a resumed run needs from them.

After round N (and as round 0, once the scaling statistics are in) the coordinator writes
``<run folder>/checkpoint/round-N/`` (:mod:`fedmodel.server.checkpoint`): the global model, the strategy's
state, and as JSON the config, the statistics every owner scales with, the seed and Python's RNG
state, and the recorder's state (metrics rows so far, per-owner metrics and the privacy state each
owner last reported). A resumed run reads the newest checkpoint, verifies it completely and
continues with round N + 1.

Privacy across the crash: the round in flight (N + 1) may have been trained by every owner. A
deployed node keeps its own record on disk (:mod:`fedmodel.clients.run_privacy`); a simulated owner's state died
with the run, so the coordinator hands each one back the state it last reported plus every round
since, the in-flight round included (:class:`~fedmodel.privacy.run_privacy.HandBack`). Re-running the
in-flight round with the same inputs replays it and does not charge it again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from fedmodel.server.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, write_checkpoint
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.strategy import restore_strategy_state, strategy_state
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import Strategy

from fedmodel.config import RunConfig
from fedmodel.errors import CheckpointError
from fedmodel.privacy import OwnerPrivacyState
from fedmodel.privacy.run_privacy import HandBack
from fedmodel.protocol import HANDBACK_PREFIX
from fedmodel.report.run_folder import RunFolder

_NOT_COMPARED = ("resume",)


def save_round(folder: RunFolder, server_round: int, arrays: ArrayRecord, strategy: Strategy, recorder: RunRecorder,
               shared: dict[str, Any], config: RunConfig) -> Path:
    """Write the checkpoint after ``server_round`` (0: before round 1) and note it in the progress events."""
    path = write_checkpoint(
        folder.path, server_round=server_round, arrays=arrays.to_torch_state_dict(),
        strategy_state=strategy_state(strategy),
        state={"round": server_round, "config": config.to_mapping(), "shared": _plain(shared),
               "rng": {"seed": config.seed, "python": _rng_state()}, "recorder": recorder.state()},
    )
    folder.event("checkpoint", round=server_round, path=str(path))
    return path


def open_checkpoint(run_dir: Path, config: RunConfig | None = None) -> Checkpoint:
    """The newest checkpoint of a run folder, verified; CheckpointError naming the file otherwise.

    With ``config`` it must be the checkpoint of that run (same settings but ``resume``).
    """
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir / 'checkpoint'}: no complete checkpoint; the run stopped before its first "
                              "one was written (start it again instead of resuming)")
    checkpoint = load_checkpoint(path)
    state = checkpoint.state
    for key in ("round", "config", "shared", "rng", "recorder"):
        if key not in state:
            raise CheckpointError(f"{path / 'state.json'}: no {key!r}; not a fedmodel run checkpoint")
    if config is not None:
        theirs = {k: v for k, v in state["config"].items() if k not in _NOT_COMPARED}
        ours = {k: v for k, v in config.to_mapping().items() if k not in _NOT_COMPARED}
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if differ:
            raise CheckpointError(f"{path / 'state.json'}: checkpoint of a run with other settings ({', '.join(differ)})")
    return checkpoint


def resume(checkpoint: Checkpoint, strategy: Strategy, recorder: RunRecorder, folder: RunFolder) -> dict[str, Any]:
    """Put the run back as it was after the checkpoint's round; returns the shared train/evaluate config."""
    state = checkpoint.state
    recorder.restore(state["recorder"])
    restore_strategy_state(strategy, checkpoint.strategy_state)
    _set_rng_state(state["rng"]["python"])
    folder.restart_metrics(recorder.rows)  # type: ignore[arg-type]  # list is invariant: a list of dicts is read-only here; drop a row written after the checkpoint (the crash's round)
    previous = _previous_report(folder)
    recorder.resumes.append({"from_round": checkpoint.server_round, "in_flight_round": checkpoint.server_round + 1,
                             "checkpoint": str(checkpoint.path), **previous})
    folder.event("resume", round=checkpoint.server_round, checkpoint=str(checkpoint.path))
    return dict(state["shared"])


def handbacks(recorder: RunRecorder, config: RunConfig, in_flight_round: int) -> dict[str, str]:
    """Train-config entries giving each simulated owner its privacy state back, the in-flight round counted.

    Every owner that may have trained since it last reported is charged for each such round (those
    that failed before training are overcharged: conservative). Deployed nodes ignore these entries.
    """
    if any(isinstance(o, str) for o in recorder.owner_state):
        return {}  # deployed owners: each node's own record holds
    base = OwnerPrivacyState()
    if config.dp and recorder.scaling is not None and recorder.scaling.get("noise_multiplier"):
        base = OwnerPrivacyState(other=[(float(recorder.scaling["noise_multiplier"]), 1.0, 1)])
    out = {}
    for owner in range(config.clients):
        reported_round, data = recorder.owner_state.get(owner, (0, None))
        state = OwnerPrivacyState.from_dict(data) if data is not None else base
        out[f"{HANDBACK_PREFIX}{owner}"] = HandBack(state, in_flight_round - reported_round, in_flight_round).to_json()
    return out


def train_config(config: RunConfig, shared: dict[str, Any], extra: dict[str, str] | None = None) -> ConfigRecord:
    """The train ConfigRecord every round sends (the hand-back entries of a resumed simulation included)."""
    return ConfigRecord({"lr": config.lr, **shared, **(extra or {})})


# ---------------------------------------------------------------------------------------------- helpers
def _previous_report(folder: RunFolder) -> dict[str, Any]:
    """What the interrupted attempt's report.json said (if it wrote one), then remove it."""
    if not folder.report_path.exists():
        return {"previous_status": "crashed (no report written)"}
    try:
        report = folder.read_report()
        out = {"previous_status": report.get("status"), "previous_reason": report.get("reason")}
    except (OSError, ValueError):
        out = {"previous_status": "unreadable report.json"}
    folder.report_path.unlink(missing_ok=True)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise CheckpointError(f"cannot checkpoint a {type(value).__name__} in the shared run config")


def _rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_rng_state(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))
