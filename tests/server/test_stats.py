"""The scaling-statistics query before round 1 waits, times out and needs min-clients like a round."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.screening import ScreenedStrategy
from fedmodel.server.stats import collect_feature_stats
from fedmodel.server.strategy import build_strategy
from flwr.app import Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.data.scaling import feature_sums, pooled_exact, public_bounds
from fedmodel.errors import BelowMinimumError
from fedmodel.report.run_folder import RunFolder

OWNERS = 4


@pytest.fixture(autouse=True)
def serverapp_identity() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        yield


class Owners:
    """Nodes 100 + owner answering the query with their exact sums; ``silent`` owners never answer.

    ``connected`` nodes are online; ``timeouts`` records the time-out of every send.
    """

    def __init__(self, config: RunConfig, silent: set[int] | None = None, connected: int = OWNERS) -> None:
        self.split = federated_split(config)
        self.bounds = public_bounds(self.split.test().x.astype(np.float64))
        self.silent, self.connected = set(silent or ()), connected
        self.timeouts: list[float | None] = []

    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(self.connected)]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self.timeouts.append(timeout)
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            assert msg.metadata.message_type == MessageType.QUERY
            owner = msg.metadata.dst_node_id - 100
            if owner in self.silent:
                continue
            sums = feature_sums(self.split.owner(owner).x.astype(np.float64), self.bounds)
            meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=msg.metadata.dst_node_id,
                            dst_node_id=0, reply_to_message_id=msg.metadata.message_id, group_id="0",
                            created_at=time.time(), ttl=600.0, message_type=MessageType.QUERY)
            metrics = MetricRecord({"sums": [float(v) for v in sums.ravel()], "epsilon-stats": 0.0,
                                    "owner": float(owner)})
            replies.append(make_message(metadata=meta, content=RecordDict({"metrics": metrics})))
        return replies


def setup(tmp_path: Path, **settings: object) -> tuple[ScreenedStrategy, RunRecorder, RunConfig]:
    config = RunConfig.from_mapping({"dataset": "breast-cancer", "clients": OWNERS, "dp": False,
                                     "out": str(tmp_path), **settings})
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    strategy = build_strategy(config, recorder)
    assert isinstance(strategy, ScreenedStrategy)
    return strategy, recorder, config


def collect(owners: Owners, config: RunConfig, strategy: ScreenedStrategy) -> object:
    return collect_feature_stats(owners, config, owners.bounds, owners.split.schema, strategy)  # type: ignore[arg-type]


def test_owners_that_do_not_answer_in_time_are_named_and_left_out(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "round-timeout": 7})
    owners = Owners(config, silent={2})
    stats = collect(owners, config, strategy)
    assert owners.timeouts == [7.0]  # Flower's send_and_receive stops waiting after round-timeout
    assert recorder.scaling is not None
    assert recorder.scaling["owners_answered"] == 3
    assert recorder.scaling["failures"] == [{"node_id": 102, "reason": "no answer within round-timeout (7 s)"}]
    answered = np.concatenate([owners.split.owner(i).x for i in (0, 1, 3)]).astype(np.float64)
    mean, std = pooled_exact(answered, owners.bounds)  # the oracle: the three answers pooled
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-9, atol=1e-12)  # type: ignore[attr-defined]
    np.testing.assert_allclose(stats.std, std, rtol=1e-6, atol=1e-9)  # type: ignore[attr-defined]


def test_too_few_answers_stop_the_run_with_the_reason(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "round-timeout": 5})
    owners = Owners(config, silent={1, 2})
    with pytest.raises(BelowMinimumError, match=r"scaling statistics: 2 of 4 owners answered, min-clients needs 3: "
                                                r"node 101: no answer within round-timeout \(5 s\); node 102: "):
        collect(owners, config, strategy)
    assert recorder.scaling is None


def test_no_answer_at_all_is_a_clear_error_without_min_clients(tmp_path: Path) -> None:
    strategy, _, config = setup(tmp_path, **{"round-timeout": 5})
    with pytest.raises(BelowMinimumError, match=r"scaling statistics: 0 of 4 owners answered, min-clients needs 1"):
        collect(Owners(config, silent={0, 1, 2, 3}), config, strategy)


def test_retry_asks_again(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "round-timeout": 5, "below-minimum": "retry"})

    class Recovering(Owners):
        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
            self.silent = {1, 2} if not self.timeouts else set()  # the first query falls short
            return super().send_and_receive(messages, timeout=timeout)

    owners = Recovering(config)
    collect(owners, config, strategy)
    assert len(owners.timeouts) == 2
    assert recorder.scaling is not None and recorder.scaling["owners_answered"] == 4
    assert '"event": "retry"' in (tmp_path / "progress.jsonl").read_text()


def test_a_node_that_never_connects_is_waited_for_at_most_the_timeout(tmp_path: Path) -> None:
    strategy, recorder, config = setup(tmp_path, **{"min-clients": 3, "round-timeout": 1})
    started = time.monotonic()
    collect(Owners(config, connected=3), config, strategy)
    assert 1 <= time.monotonic() - started < 10
    assert recorder.scaling is not None and recorder.scaling["owners_answered"] == 3


def test_too_few_nodes_connected_stops_before_asking(tmp_path: Path) -> None:
    strategy, _, config = setup(tmp_path, **{"min-clients": 3, "round-timeout": 1})
    owners = Owners(config, connected=2)
    with pytest.raises(BelowMinimumError, match=r"scaling statistics: 2 of 4 owners' nodes connected after 1 s"):
        collect(owners, config, strategy)
    assert owners.timeouts == []
