"""Coordinator crash and resume, in process: the real ServerApp pieces and the real ClientApp handlers.

The coordinator's loop (:func:`fedmodel.server.rounds.run_rounds`), its checkpoints and the resume
(:mod:`fedmodel.server.resume`) run as in the ServerApp; the grid delivers each message to the real ClientApp
``train`` / ``evaluate`` handlers with a Flower Context per simulated owner. A crash drops the
coordinator and every owner's context (a simulation's state dies with it); the resumed run starts
from the newest checkpoint with fresh contexts. For a crash at every round, before or after the
owners trained the round in flight, the resumed run ends with the uninterrupted run's model, bit
for bit, and every owner's epsilon equal to the uninterrupted run's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fedmodel.clients.app as client_app
import pytest
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.resume import handbacks, open_checkpoint, resume, save_round, train_config
from fedmodel.server.rounds import run_rounds
from fedmodel.server.strategy import build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.data import federated_split
from fedmodel.data.prepare import as_raw, cleaning_spec, coordinator_spec, prepare_shard
from fedmodel.models import build_model
from fedmodel.report.run_folder import RunFolder
from fedmodel.training import evaluate

OWNERS, ROUNDS = 3, 3


class Crash(Exception):
    """The coordinator died."""


@pytest.fixture(autouse=True, scope="module")
def serverapp_identity() -> Iterator[None]:
    """What a running ServerApp has and new Messages need (run and node ids)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        yield


class InProcessGrid:
    """Delivers each message to the real ClientApp handler of its owner; can die at a chosen round."""

    def __init__(self, config: RunConfig, crash_round: int | None = None, owners_train_first: bool = False) -> None:
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(),
                                          run_config=config.to_mapping(),
                                          node_config={"partition-id": i, "num-partitions": OWNERS})
                         for i in range(OWNERS)}
        self.crash_round, self.owners_train_first = crash_round, owners_train_first

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        crashing = (self.crash_round is not None and messages and messages[0].metadata.message_type == MessageType.TRAIN
                    and int(messages[0].content["config"]["server-round"]) == self.crash_round)  # type: ignore[arg-type]
        if crashing and not self.owners_train_first:
            raise Crash
        for msg in messages:
            handler = client_app.train if msg.metadata.message_type == MessageType.TRAIN else client_app.evaluate
            replies.append(handler(msg, self.contexts[msg.metadata.dst_node_id]))
        if crashing:
            raise Crash  # the owners trained; their replies never reached an aggregation
        return replies


def coordinator(config: RunConfig, run_dir: Path, grid: InProcessGrid) -> tuple[dict[str, torch.Tensor], RunRecorder]:
    """What fedmodel.server.app.main does, minus Flower: fresh or resumed, then rounds with a checkpoint after each."""
    folder = RunFolder(run_dir)
    checkpoint = open_checkpoint(run_dir, config) if config.resume else None
    if checkpoint is None:
        folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    strategy = build_strategy(config, recorder)
    split = federated_split(config)
    shared = resume(checkpoint, strategy, recorder, folder) if checkpoint else split.schema.to_config()
    test = prepare_shard(as_raw(split.test(), "test", split.schema), coordinator_spec(cleaning_spec(config)),
                         split.schema, name="digits").data
    model = build_model(config.model, test.num_features, test.num_classes, seed=config.seed)

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate(model, test, device=torch.device("cpu"))
        recorder.central_evaluation(server_round, metrics)
        return MetricRecord(metrics)

    if checkpoint is None:
        arrays, first, extra = ArrayRecord(model.state_dict()), 1, {}
        central_eval(0, arrays)
        save_round(folder, 0, arrays, strategy, recorder, shared, config)
    else:
        arrays, first = ArrayRecord(checkpoint.arrays), checkpoint.server_round + 1
        extra = handbacks(recorder, config, in_flight_round=first)
    final = run_rounds(strategy, grid, config, arrays=arrays, first_round=first,  # type: ignore[arg-type]
                       train_config=train_config(config, shared, extra), evaluate_config=ConfigRecord(shared),
                       evaluate_fn=central_eval,
                       after_round=lambda r, a: save_round(folder, r, a, strategy, recorder, shared, config))
    return final.to_torch_state_dict(), recorder


def owner_epsilon(recorder: RunRecorder) -> dict[int | str, float]:
    return {o: m["epsilon"] for o, m in recorder.owner_privacy.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], dict[int | str, float]]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    config = RunConfig(clients=OWNERS, rounds=ROUNDS, batch_size=64, out=str(run_dir), run_id="uninterrupted")
    weights, recorder = coordinator(config, run_dir, InProcessGrid(config))
    return weights, owner_epsilon(recorder)


@pytest.mark.parametrize(("crash_round", "owners_trained"), [(1, True), (2, False), (3, True)],
                         ids=["round-1-after-owners-trained", "round-2-before", "round-3-after"])
def test_resume_after_a_crash_in_any_round_ends_as_the_uninterrupted_run(
        tmp_path: Path, uninterrupted: tuple[dict[str, torch.Tensor], dict[int | str, float]], crash_round: int,
        owners_trained: bool) -> None:
    config = RunConfig(clients=OWNERS, rounds=ROUNDS, batch_size=64, out=str(tmp_path), run_id="crashed")
    with pytest.raises(Crash):
        coordinator(config, tmp_path, InProcessGrid(config, crash_round, owners_trained))
    assert open_checkpoint(tmp_path).server_round == crash_round - 1

    resumed = config.replace(resume=True)
    weights, recorder = coordinator(resumed, tmp_path, InProcessGrid(resumed))  # every owner's state died

    expected_weights, expected_eps = uninterrupted
    for key, value in expected_weights.items():
        assert torch.equal(weights[key], value), key  # the in-flight round replayed exactly
    assert owner_epsilon(recorder) == expected_eps  # counted once: not forgotten, not twice
    assert [r["round"] for r in recorder.rows] == list(range(1, ROUNDS + 1))
    assert recorder.resumes[0]["in_flight_round"] == crash_round
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in rows[1:]] == [str(r) for r in range(1, ROUNDS + 1)]


def test_an_owner_that_trained_the_in_flight_round_and_is_not_asked_again_keeps_it_counted(
        tmp_path: Path) -> None:
    """The hand-back counts the in-flight round for every owner: one that never trains again shows it."""
    config = RunConfig(clients=OWNERS, rounds=ROUNDS, batch_size=64, out=str(tmp_path), run_id="partial")
    with pytest.raises(Crash):
        coordinator(config, tmp_path, InProcessGrid(config, crash_round=2, owners_train_first=True))
    recorder = RunRecorder(config, RunFolder(tmp_path))
    recorder.restore(open_checkpoint(tmp_path).state["recorder"])
    back = handbacks(recorder, config, in_flight_round=2)
    from fedmodel.privacy.run_privacy import HandBack

    for owner in range(OWNERS):
        handback = HandBack.from_json(back[f"fedmodel-resume:{owner}"])
        record, _ = handback.adopt(server_round=3)  # first asked after the in-flight round
        assert record.state.steps == 2 * handback.state.steps  # round 1 reported + round 2 in flight
        assert record.state.epsilon(1e-5) > handback.state.epsilon(1e-5)
