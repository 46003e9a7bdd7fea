"""20% Byzantine owners on digits: robust aggregation holds the accuracy, plain FedAvg does not.

Ten owners train with DP-SGD through the real ClientApp ``train`` handler (real Flower Messages and
Contexts); two of them attack (``inject-faults``, the testing aid). The coordinator's part is the
real one: :func:`fedmodel.server.rounds.run_rounds` with the strategy :func:`fedmodel.server.strategy.build_strategy`
makes (reply screening, then Flower's aggregator). Two readings of "sign-flipped, scaled x10":

* owner 8 sign-flipped, owner 9 scaled x10: the coordinate-wise rules hold;
* both sign-flipped **and** scaled x10 (``scale-10``): MultiKrum (F = 2) holds, the
  coordinate-wise rules do not (two updates 10x the others' size still drag a median of ten).

Accuracy after 5 rounds at epsilon 3 (seed 42; seeds 1, 2, 3 in README):

=====================  =====  ======  ======  ==========  =====  ==========
attack                 clean  FedAvg  median  trimmed .2  Krum   MultiKrum
=====================  =====  ======  ======  ==========  =====  ==========
8 signflip, 9 x10      0.844  0.683   0.847   0.827       0.482  0.799
8 and 9 signflip x10   0.844  0.086   0.691   0.641       0.429  0.830
=====================  =====  ======  ======  ==========  =====  ==========
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fedmodel.clients.app as client_app
import pytest
import torch
from fedmodel.server.recorder import RunRecorder
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

SIGNFLIP_AND_X10 = "8:signflip,9:scale10"
BOTH_SIGNFLIP_X10 = "8:scale-10,9:scale-10"


@pytest.fixture(autouse=True, scope="module")
def serverapp_identity() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        yield


class Owners:
    """Each train message goes to the real ClientApp handler with that owner's Context (no federated evaluation)."""

    def __init__(self, config: RunConfig) -> None:
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config=config.to_mapping(),
                                          node_config={"partition-id": i, "num-partitions": config.clients})
                         for i in range(config.clients)}

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            if msg.metadata.message_type == MessageType.TRAIN:
                replies.append(client_app.train(msg, self.contexts[msg.metadata.dst_node_id]))
        return replies


def final_accuracy(tmp_path: Path, **settings: str) -> tuple[float, dict[str, torch.Tensor]]:
    config = RunConfig.from_mapping({"clients": 10, "rounds": 5, "seed": 42, "out": str(tmp_path), **settings})
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    strategy = build_strategy(config, recorder)
    split = federated_split(config)
    test = prepare_shard(as_raw(split.test(), "test", split.schema), coordinator_spec(cleaning_spec(config)),
                         split.schema, name="digits").data
    model = build_model(config.model, test.num_features, test.num_classes, seed=config.seed)

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluate(model, test, device=torch.device("cpu"))
        recorder.central_evaluation(server_round, metrics)
        return MetricRecord(metrics)

    final = run_rounds(strategy, Owners(config), config, arrays=ArrayRecord(model.state_dict()),  # type: ignore[arg-type]
                       first_round=1, train_config=ConfigRecord({"lr": config.lr, **split.schema.to_config()}),
                       evaluate_config=ConfigRecord({}), evaluate_fn=central, after_round=lambda r, a: None)
    assert all(r["num_replies"] == 10 for r in recorder.rows)  # the attackers' updates are well formed
    return recorder.rows[-1]["accuracy"], final.to_torch_state_dict()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Final accuracy of plain FedAvg without attackers."""
    accuracy, _ = final_accuracy(tmp_path_factory.mktemp("clean"))
    assert accuracy > 0.8  # the baseline itself learned
    return accuracy


@pytest.mark.parametrize(("attack", "robust"), [(SIGNFLIP_AND_X10, ("median", "trimmed-mean:0.2")),
                                                (BOTH_SIGNFLIP_X10, ("multikrum:2",))],
                         ids=["one-signflip-one-x10", "both-signflip-x10"])
def test_robust_aggregation_loses_at_most_5_points_to_20_percent_byzantine_owners_and_fedavg_loses_more(
        clean: float, attack: str, robust: tuple[str, ...], tmp_path: Path) -> None:
    attacked = {name: final_accuracy(tmp_path / name.replace(":", "-"), **{"inject-faults": attack,
                                                                          "aggregation": name})
                for name in ("fedavg", *robust)}
    accuracy = {name: acc for name, (acc, _) in attacked.items()}
    print(f"clean FedAvg {clean:.4f}; with {attack}: {accuracy}")
    for name in robust:
        assert accuracy[name] >= clean - 0.05, name
        assert accuracy["fedavg"] < accuracy[name]
    assert accuracy["fedavg"] < clean - 0.05  # plain FedAvg loses more than the 5 points robust rules keep
    for _, weights in attacked.values():
        assert all(bool(w.isfinite().all()) for w in weights.values())
