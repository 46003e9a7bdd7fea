"""Central DP on the coordinator, in memory with real Flower Messages: noise of the right std on the
equal-weight mean of the updates actually averaged, unclipped updates kept out, adaptive clipping that
tracks its target, releases recorded (and charged again for the round in flight on resume)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.strategy import build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.errors import AllClientsFailedError
from fedmodel.report.run_folder import RunFolder

SIZE = 20_000  # parameters: the empirical noise std is then within about 1% of the true one


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a running ServerApp has and configure_train's new Messages need (run and node ids)."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class NodesOnly:
    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(self.count)]


def global_model() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(SIZE)}


def update(norm: float, owner: int) -> dict[str, torch.Tensor]:
    """New weights whose distance from the global model has this L2 norm (a different direction per owner)."""
    direction = torch.randn(SIZE, generator=torch.Generator().manual_seed(owner))
    return {"w": direction / direction.norm() * norm}


def reply(owner: int, tensors: dict[str, torch.Tensor], *, num_examples: float = 100.0, **extra: float) -> Message:
    meta = Metadata(run_id=1, message_id=f"r{owner}", src_node_id=100 + owner, dst_node_id=0,
                    reply_to_message_id=f"m{owner}", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=MessageType.TRAIN)
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": 0.5, "owner": float(owner), **extra})
    return make_message(metadata=meta, content=RecordDict({"arrays": ArrayRecord(tensors), "metrics": metrics}))


def failed(owner: int) -> Message:
    meta = Metadata(run_id=1, message_id=f"r{owner}", src_node_id=100 + owner, dst_node_id=0,
                    reply_to_message_id=f"m{owner}", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=MessageType.TRAIN)
    return make_message(metadata=meta, error=Error(code=0, reason=f"owner {owner}: it broke"))


def central(tmp_path: Path, **values: Any) -> tuple[Any, RunRecorder]:
    config = RunConfig.from_mapping({"clients": 4, "rounds": 2, "out": str(tmp_path), **values})
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    strategy = build_strategy(config, recorder)
    strategy.rng = np.random.default_rng(7)
    return strategy, recorder


def train_round(strategy: Any, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, Any]:
    messages = list(strategy.configure_train(server_round, ArrayRecord(global_model()), ConfigRecord({"lr": 0.1}),
                                             NodesOnly(4)))
    assert all(m.content["config"][KEY_CLIPPING_NORM] == strategy.clipping_norm for m in messages)
    return strategy.aggregate_train(server_round, replies)


def noise_of(aggregated: ArrayRecord, mean: torch.Tensor) -> float:
    return float((aggregated.to_torch_state_dict()["w"] - mean).std())


def test_is_flowers_client_side_fixed_clipping_wrapper(tmp_path: Path) -> None:
    strategy, recorder = central(tmp_path, **{"central-dp": "fixed"})
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping)
    assert strategy.recorder is recorder and strategy.min_replies == 1  # the recording strategy's, passed through


def test_noise_std_is_z_clip_over_owners_averaged(tmp_path: Path) -> None:
    strategy, recorder = central(tmp_path, **{"central-dp": "fixed", "central-noise": 1.5, "central-clip": 2.0})
    updates = [update(2.0, o) for o in range(4)]
    aggregated, _ = train_round(strategy, 1, [reply(o, u) for o, u in enumerate(updates)])
    assert aggregated is not None
    mean = sum(u["w"] for u in updates) / 4
    assert noise_of(aggregated, mean) == pytest.approx(1.5 * 2.0 / 4, rel=0.03)

    # Round 2 with one owner failing: the noise is calibrated to the 3 updates averaged, not the 4 asked.
    aggregated, _ = train_round(strategy, 2, [reply(o, updates[o]) for o in range(3)] + [failed(3)])
    assert aggregated is not None
    assert noise_of(aggregated, sum(updates[o]["w"] for o in range(3)) / 3) == pytest.approx(1.5 * 2.0 / 3, rel=0.03)
    releases = recorder.central["releases"]
    assert [(r["round"], r["owners"]) for r in releases] == [(1, 4), (2, 3)]
    assert [r["noise_std"] for r in releases] == pytest.approx([0.75, 1.0])
    client_level = recorder.report("completed")["privacy"]["client_level"]
    assert client_level["rounds"] == 2 and client_level["epsilon"] > 0


def test_updates_are_averaged_with_equal_weights(tmp_path: Path) -> None:
    strategy, _ = central(tmp_path, **{"central-dp": "fixed", "central-noise": 1e-9})
    updates = [update(1.0, o) for o in range(2)]
    aggregated, _ = train_round(strategy, 1, [reply(0, updates[0], num_examples=10.0),
                                              reply(1, updates[1], num_examples=1000.0)])
    assert aggregated is not None
    torch.testing.assert_close(aggregated.to_torch_state_dict()["w"], (updates[0]["w"] + updates[1]["w"]) / 2,
                               atol=1e-6, rtol=0)


def test_an_unclipped_update_is_rejected_and_never_averaged(tmp_path: Path) -> None:
    strategy, recorder = central(tmp_path, **{"central-dp": "fixed", "central-noise": 1e-9, "central-clip": 1.0})
    good = update(1.0, 0)
    aggregated, _ = train_round(strategy, 1, [reply(0, good), reply(1, update(1.05, 1))])
    assert aggregated is not None
    torch.testing.assert_close(aggregated.to_torch_state_dict()["w"], good["w"], atol=1e-6, rtol=0)
    failure = recorder._round.failures[0]  # type: ignore[union-attr]
    assert failure.owner == 1 and "above the central-DP clipping norm 1" in failure.reason  # a typed Failure
    assert recorder.central["releases"][0]["owners"] == 1


def test_a_round_that_aggregates_nothing_releases_and_charges_nothing(tmp_path: Path) -> None:
    strategy, recorder = central(tmp_path, **{"central-dp": "fixed", "min-clients": "2"})
    with pytest.raises(Exception, match="min-clients needs 2"):
        train_round(strategy, 1, [reply(0, update(0.5, 0)), failed(1)])
    assert recorder.central["releases"] == []


@pytest.mark.parametrize(("norms", "grows"), [((2.0,) * 4, True), ((0.01,) * 4, False)])
def test_adaptive_norm_moves_toward_the_update_norms(tmp_path: Path, norms: tuple[float, ...], grows: bool) -> None:
    """All clipped: the norm grows (Andrew et al.); none clipped: it shrinks. Noise uses the round's norm."""
    strategy, recorder = central(tmp_path, **{"central-dp": "adaptive", "central-noise": 0.3, "central-clip": 0.1,
                                              "central-count-stddev": 0.2})
    clipped = [float(n > 0.1) for n in norms]
    replies = [reply(o, update(min(n, 0.1), o), **{KEY_NORM_BIT: b}) for o, (n, b) in enumerate(zip(norms, clipped, strict=True))]
    aggregated, _ = train_round(strategy, 1, replies)
    assert aggregated is not None
    release = recorder.central["releases"][0]
    assert release["clip"] == 0.1  # the owners' norm this round, not the next one's
    assert release["noise_std"] == pytest.approx(strategy.noise_multiplier * 0.1 / 4)
    assert strategy.noise_multiplier == pytest.approx((0.3 ** -2 - 0.4 ** -2) ** -0.5)
    assert (recorder.central["clip_now"] > 0.1) is grows
    assert math.isclose(recorder.central["clip_now"], strategy.clipping_norm)


def test_adaptive_reply_without_norm_bit_is_rejected(tmp_path: Path) -> None:
    strategy, _ = central(tmp_path, **{"central-dp": "adaptive", "central-noise": 0.3, "central-clip": 1.0,
                                       "central-count-stddev": 0.2})
    with pytest.raises(AllClientsFailedError, match="did not run adaptive clipping"):
        train_round(strategy, 1, [reply(0, update(0.5, 0)), reply(1, update(0.5, 1))])


def test_resume_keeps_releases_and_charges_the_round_in_flight(tmp_path: Path) -> None:
    strategy, recorder = central(tmp_path, **{"central-dp": "adaptive", "central-noise": 0.3, "central-clip": 0.1,
                                              "central-count-stddev": 0.2})
    replies = [reply(o, update(0.1, o), **{KEY_NORM_BIT: 1.0}) for o in range(4)]
    train_round(strategy, 1, replies)
    saved = json.loads(json.dumps(recorder.state()))  # as a checkpoint holds it

    resumed, again = central(tmp_path / "again", **{"central-dp": "adaptive", "central-noise": 0.3,
                                                     "central-clip": 0.1, "central-count-stddev": 0.2})
    clip_after_1 = saved["central"]["clip_now"]
    again.restore(saved)
    again.resumes.append({"from_round": 1, "in_flight_round": 2})
    train_round(resumed, 2, replies)
    assert resumed.state["releases"][0]["clip"] == 0.1
    assert resumed.state["releases"][1]["clip"] == pytest.approx(clip_after_1) != 0.1
    assert [c["round"] for c in again.central["charged_on_resume"]] == [2]
    assert again.report("completed")["privacy"]["client_level"]["releases_charged"] == 3
