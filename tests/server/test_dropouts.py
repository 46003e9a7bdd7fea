"""Dropouts at the coordinator: waiting for nodes, time-outs named per owner, the minimum, retrying a round."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.rounds import run_rounds
from fedmodel.server.strategy import build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.errors import BelowMinimumError
from fedmodel.report.run_folder import RunFolder

TEST_METRICS = {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}


@pytest.fixture(autouse=True)
def serverapp_identity() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        yield


def model() -> dict[str, torch.Tensor]:
    return {"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}


def answer(msg: Message, owner: int) -> Message:
    """An owner's honest reply to a train or evaluate message."""
    metrics = {"num-examples": 10.0, "owner": float(owner)}
    if msg.metadata.message_type == MessageType.TRAIN:
        content = RecordDict({"arrays": ArrayRecord({k: v + 1 for k, v in model().items()}),
                              "metrics": MetricRecord({**metrics, "train-loss": 0.5})})
    else:
        content = RecordDict({"metrics": MetricRecord({**metrics, "loss": 1.0, "accuracy": 0.5})})
    meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=msg.metadata.dst_node_id, dst_node_id=0,
                    reply_to_message_id=msg.metadata.message_id, group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=msg.metadata.message_type)
    return make_message(metadata=meta, content=content)


class Nodes:
    """A grid of nodes 100 + owner; ``silent[r]`` owners do not answer train round r (dead or too slow)."""

    def __init__(self, owners: int, silent: dict[int, set[int]] | None = None, connected: int | None = None) -> None:
        self.owners, self.silent = owners, silent or {}
        self.connected = owners if connected is None else connected
        self.train_calls = 0

    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(self.connected)]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            owner = msg.metadata.dst_node_id - 100
            if msg.metadata.message_type == MessageType.TRAIN:
                server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
                if owner in self.silent.get(server_round, set()):
                    continue
            replies.append(answer(msg, owner))
        return replies


def setup(tmp_path: Path, **settings: object) -> tuple[FedAvg, RunRecorder, RunConfig]:
    config = RunConfig.from_mapping({"clients": 4, "rounds": 3, "out": str(tmp_path), **settings})
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    return build_strategy(config, recorder, max_examples=1000), recorder, config


def run(strategy: FedAvg, recorder: RunRecorder, config: RunConfig, grid: Nodes) -> ArrayRecord:
    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        recorder.central_evaluation(server_round, TEST_METRICS)
        return MetricRecord(TEST_METRICS)

    return run_rounds(strategy, grid, config, arrays=ArrayRecord(model()), first_round=1,  # type: ignore[arg-type]
                      train_config=ConfigRecord({}), evaluate_config=ConfigRecord({}), evaluate_fn=central,
                      after_round=lambda r, a: None)


def test_owners_that_do_not_answer_are_named_per_round_and_the_run_goes_on(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 2, "round-timeout": 5})
    run(strategy, recorder, config, Nodes(4, silent={2: {1, 3}, 3: {3}}))
    report = recorder.report("completed")
    rows = report["rounds"]
    assert report["unfinished_round"] is None
    assert [r["replied"] for r in rows] == [[0, 1, 2, 3], [0, 2], [0, 1, 2]]
    assert [r["timed_out"] for r in rows] == [[], [1, 3], [3]]  # named by the owner the node answered for
    assert [r["num_timed_out"] for r in rows] == [0, 2, 1]
    assert "timed_out" in (tmp_path / "metrics.csv").read_text().splitlines()[0].replace("num_timed_out", "timed_out")


def test_below_the_minimum_the_run_stops_with_the_reason_before_aggregating(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3})
    with pytest.raises(BelowMinimumError, match=r"round 2: 2 valid replies, min-clients needs 3: "
                                                r"owner 1 timed out; owner 3 timed out"):
        run(strategy, recorder, config, Nodes(4, silent={2: {1, 3}}))
    assert [r["round"] for r in recorder.rows] == [1]
    report = recorder.report("failed", "below the minimum")
    assert report["unfinished_round"] == {"round": 2, "attempt": 1, "replied": [0, 2], "failures": [],
                                          "timed_out": [1, 3], "not_connected": []}


def test_retry_runs_the_round_again_and_reports_the_earlier_attempt(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "below-minimum": "retry"})

    class Recovering(Nodes):
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
            messages = list(messages)
            if messages and messages[0].metadata.message_type == MessageType.TRAIN:
                self.train_calls += 1
                self.silent = {2: {1, 3}} if self.train_calls == 2 else {}  # round 2's first attempt falls short
            return super().send_and_receive(messages, timeout=timeout)

    run(strategy, recorder, config, Recovering(4))
    rows = recorder.report("completed")["rounds"]
    assert [r["attempt"] for r in rows] == [1, 2, 1]
    assert rows[1]["retried"] == [{"attempt": 1, "replied": [0, 2], "failures": [], "timed_out": [1, 3],
                                   "not_connected": []}]


def test_retry_gives_up_after_three_attempts(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "below-minimum": "retry"})
    with pytest.raises(BelowMinimumError, match="tried 3 times"):
        run(strategy, recorder, config, Nodes(4, silent={1: {0, 1}}))


def test_a_round_waits_for_nodes_at_most_the_timeout_then_goes_on_with_the_minimum(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 2, "round-timeout": 1})
    started = time.monotonic()
    run(strategy, recorder, config, Nodes(4, connected=3))  # one owner's node never connects
    assert 1 <= time.monotonic() - started < 10  # the first round waits one round-timeout, later ones do not
    assert [r["replied"] for r in recorder.rows] == [[0, 1, 2]] * 3


def test_an_owner_whose_node_disconnected_is_named_as_not_connected(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 2, "round-timeout": 1})

    class Dropping(Nodes):
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
            messages = list(messages)
            replies = super().send_and_receive(messages, timeout=timeout)
            if messages and messages[0].metadata.message_type == MessageType.EVALUATE:
                self.connected = 3  # owner 3's node goes away after round 1
            return replies

    run(strategy, recorder, config, Dropping(4))
    assert [r["not_connected"] for r in recorder.rows] == [[], [3], [3]]
    assert [r["replied"] for r in recorder.rows] == [[0, 1, 2, 3], [0, 1, 2], [0, 1, 2]]


def test_too_few_nodes_connected_after_the_timeout_stops_the_run(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "round-timeout": 1})
    with pytest.raises(BelowMinimumError, match=r"round 1: 2 of 4 owners' nodes connected after 1 s; "
                                                r"min-clients needs 3"):
        run(strategy, recorder, config, Nodes(4, connected=2))


def test_without_min_clients_failures_are_tolerated_as_before(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path)
    run(strategy, recorder, config, Nodes(4, silent={1: {0, 1, 2}}))
    assert [r["num_replies"] for r in recorder.rows] == [1, 4, 4]
