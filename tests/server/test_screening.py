"""The screening wrapper on its own: settings only by keyword, checked before use, around any FedAvg-based strategy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.screening import Reference, ScreenedStrategy
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import FedAvg, FedAvgM
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.report.run_folder import RunFolder


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class NodesOnly:
    def get_node_ids(self) -> list[int]:
        return [100, 101]


def recorder(tmp_path: Path) -> RunRecorder:
    config = RunConfig(clients=2, rounds=1, out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    return RunRecorder(config, folder)


def reply(owner: int, value: float) -> Message:
    meta = Metadata(run_id=1, message_id=f"r{owner}", src_node_id=100 + owner, dst_node_id=0,
                    reply_to_message_id=f"m{owner}", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=MessageType.TRAIN)
    metrics = MetricRecord({"num-examples": 10.0, "train-loss": 0.5, "owner": float(owner)})
    return make_message(metadata=meta, content=RecordDict({"arrays": ArrayRecord({"w": torch.full((3,), value)}),
                                                           "metrics": metrics}))


def test_settings_are_keyword_only_and_checked(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ScreenedStrategy(FedAvg(), recorder(tmp_path), int)  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_update_norm = 0"):
        ScreenedStrategy(FedAvg(), recorder=recorder(tmp_path), owner_order=int, max_update_norm=0)
    with pytest.raises(ValueError, match="each must be >= 1"):
        ScreenedStrategy(FedAvg(), recorder=recorder(tmp_path), owner_order=int, min_replies=0)


def test_wraps_a_strategy_fedmodel_does_not_build_and_runs_its_extra_checks(tmp_path: Path) -> None:
    """FedAvgM (server momentum) aggregates; an extra check sees the round's config and rejects owner 1."""
    seen: list[object] = []

    def no_big_values(msg: Message, reference: Reference, round_config: ConfigRecord) -> str | None:
        seen.append(round_config["lr"])
        return "too big" if float(msg.content["arrays"]["w"].numpy().max()) > 1 else None

    rec = recorder(tmp_path)
    screened = ScreenedStrategy(FedAvgM(min_train_nodes=1, min_available_nodes=1), recorder=rec, owner_order=int,
                                checks=[no_big_values])
    grid: Any = NodesOnly()
    screened.configure_train(1, ArrayRecord({"w": torch.zeros(3)}), ConfigRecord({"lr": 0.1}), grid)
    arrays, _ = screened.aggregate_train(1, [reply(1, 5.0), reply(0, 0.5)])
    assert arrays is not None
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.full((3,), 0.5))
    assert seen == [0.1, 0.1] and [m.metadata.src_node_id for m in screened.aggregated] == [100]
    rec.central_evaluation(1, {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5})
    failures = rec.report("completed")["rounds"][0]["failures"]
    assert [f["owner"] for f in failures] == [1] and "update rejected: too big" in failures[0]["reason"]
