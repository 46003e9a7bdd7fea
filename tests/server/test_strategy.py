"""The strategies fed real Flower replies: screening keeps bad updates out, robust aggregators resist an attacker."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.strategy import aggregator, build_strategy, restore_strategy_state, strategy_state
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import AggregationSpec, RunConfig
from fedmodel.errors import AllClientsFailedError, ConfigError
from fedmodel.report.run_folder import RunFolder

Tensors = dict[str, torch.Tensor]
TEST_METRICS = {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a running ServerApp has and configure_train's new Messages need (run and node ids)."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class NodesOnly:
    """The one Grid method configure_train uses: the connected node ids."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(self.count)]


def global_model() -> Tensors:
    gen = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(4, 6, generator=gen), "fc.bias": torch.randn(4, generator=gen)}


def step() -> Tensors:
    """The honest owners' common update direction."""
    return {"fc.weight": torch.full((4, 6), 0.5), "fc.bias": torch.full((4,), -0.5)}


def honest(owner: int) -> Tensors:
    gen = torch.Generator().manual_seed(100 + owner)
    return {k: g + step()[k] + 0.01 * torch.randn(g.shape, generator=gen) for k, g in global_model().items()}


def sign_flipped_x10() -> Tensors:
    return {k: g - 10 * step()[k] for k, g in global_model().items()}


def reply(owner: int, tensors: Tensors, *, num_examples: float = 100.0, **extra: float) -> Message:
    meta = Metadata(run_id=1, message_id=f"r{owner}", src_node_id=100 + owner, dst_node_id=0,
                    reply_to_message_id=f"m{owner}", group_id="1", created_at=time.time(), ttl=600.0,
                    message_type=MessageType.TRAIN)
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": 0.5, "owner": float(owner), **extra})
    return make_message(metadata=meta, content=RecordDict({"arrays": ArrayRecord(tensors), "metrics": metrics}))


def strategy_for(tmp_path: Path, clients: int, aggregation: str = "fedavg",
                 max_update_norm: float = 0.0) -> tuple[FedAvg, RunRecorder]:
    config = RunConfig(clients=clients, rounds=1, aggregation=AggregationSpec.parse(aggregation),
                       max_update_norm=max_update_norm, out=str(tmp_path))
    config.validate()
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    strategy = build_strategy(config, recorder, max_examples=1000)
    grid = NodesOnly(clients)
    sent = strategy.configure_train(1, ArrayRecord(global_model()), ConfigRecord({}), grid)  # type: ignore[arg-type]
    assert len(list(sent)) == clients
    return strategy, recorder


def aggregate(strategy: FedAvg, replies: list[Message]) -> Tensors:
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays.to_torch_state_dict()


def round_failures(recorder: RunRecorder) -> list[dict[str, Any]]:
    """Close round 1 as the ServerApp does and return the failures its report row lists."""
    recorder.central_evaluation(1, TEST_METRICS)
    return list(recorder.report("completed")["rounds"][0]["failures"])


def distance(a: Tensors, b: Tensors) -> float:
    return math.sqrt(sum(float(torch.sum((a[k].double() - b[k].double()) ** 2)) for k in a))


def honest_mean(owners: range) -> Tensors:
    return {k: torch.stack([honest(o)[k] for o in owners]).mean(dim=0) for k in global_model()}


@pytest.mark.parametrize(
    ("aggregation", "flower_class"),
    [("fedavg", FedAvg), ("median", FedMedian), ("trimmed-mean:0.2", FedTrimmedAvg), ("krum:1", Krum),
     ("multikrum:1", MultiKrum)],
)
def test_build_strategy_uses_flowers_aggregator(tmp_path: Path, aggregation: str, flower_class: type) -> None:
    built, _ = strategy_for(tmp_path, 5, aggregation)
    strategy = aggregator(built)  # the Flower strategy inside the screening wrapper
    assert isinstance(strategy, flower_class)
    if aggregation == "trimmed-mean:0.2":
        assert strategy.beta == 0.2  # type: ignore[attr-defined]
    if "krum" in aggregation:
        assert strategy.num_malicious_nodes == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_a_non_finite_reply_is_rejected_and_does_not_touch_the_aggregate(tmp_path: Path, poison: float) -> None:
    clean, _ = strategy_for(tmp_path / "clean", 5)
    expected = aggregate(clean, [reply(o, honest(o)) for o in range(4)])

    strategy, recorder = strategy_for(tmp_path / "poisoned", 5)
    bad = honest(4)
    bad["fc.bias"][1] = poison
    got = aggregate(strategy, [reply(o, honest(o)) for o in range(4)] + [reply(4, bad)])

    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    recorder.central_evaluation(1, TEST_METRICS)
    row = recorder.report("completed")["rounds"][0]
    assert (row["num_replies"], row["num_failures"]) == (4, 1)
    failure = row["failures"][0]
    word = "NaN" if math.isnan(poison) else "infinity"
    assert failure["owner"] == 4 and failure["node_id"] == 104
    assert f"update rejected: non-finite values: {word} in 'fc.bias'" in failure["reason"]


@pytest.mark.parametrize("aggregation", ["median", "trimmed-mean:0.2", "krum:1", "multikrum:1"])
def test_robust_aggregation_resists_one_sign_flipped_x10_update_among_5(tmp_path: Path, aggregation: str) -> None:
    target = honest_mean(range(4))
    scale = distance(target, global_model())  # the length of an honest step

    fedavg, _ = strategy_for(tmp_path / "fedavg", 5)
    moved = distance(aggregate(fedavg, [reply(o, honest(o)) for o in range(4)] + [reply(4, sign_flipped_x10())]),
                     target)
    robust, _ = strategy_for(tmp_path / "robust", 5, aggregation)
    kept = distance(aggregate(robust, [reply(o, honest(o)) for o in range(4)] + [reply(4, sign_flipped_x10())]),
                    target)

    assert moved > 2 * scale  # FedAvg lands 2.2 honest steps away, on the attacker's side
    assert kept < 0.1 * scale, (aggregation, kept, scale)


def test_max_update_norm_rejects_a_scaled_update(tmp_path: Path) -> None:
    strategy, recorder = strategy_for(tmp_path, 5, max_update_norm=10.0)
    aggregate(strategy, [reply(o, honest(o)) for o in range(4)] + [reply(4, sign_flipped_x10())])
    failures = round_failures(recorder)
    assert [f["owner"] for f in failures] == [4]
    assert "is above max-update-norm 10" in failures[0]["reason"]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (lambda: reply(4, {**honest(4), "fc.extra": torch.zeros(2)}), "unexpected fc.extra"),
        (lambda: reply(4, {"fc.weight": torch.zeros(5, 6), "fc.bias": torch.zeros(4)}), "has shape (5, 6)"),
        (lambda: reply(4, honest(4), num_examples=1e9), "num-examples = 1000000000.0"),
        (lambda: reply(4, honest(4), num_examples=0.0), "num-examples = 0.0"),
        (lambda: reply(4, honest(4), sneaky=1.0), "metrics differ from the other replies"),
    ],
    ids=["extra-key", "shape", "too-many-examples", "no-examples", "metric-keys"],
)
def test_malformed_replies_are_rejected_instead_of_failing_the_round(tmp_path: Path, bad: Callable[[], Message],
                                                                    needle: str) -> None:
    strategy, recorder = strategy_for(tmp_path, 5)
    arrays = aggregate(strategy, [reply(o, honest(o)) for o in range(4)] + [bad()])
    assert set(arrays) == set(global_model())
    failures = round_failures(recorder)
    assert len(failures) == 1 and failures[0]["owner"] == 4
    assert needle in failures[0]["reason"], failures[0]["reason"]


def test_a_round_where_every_update_is_rejected_stops_the_run(tmp_path: Path) -> None:
    strategy, _ = strategy_for(tmp_path, 2)
    nan = {k: torch.full_like(v, math.nan) for k, v in global_model().items()}
    with pytest.raises(AllClientsFailedError, match="all 2 owners failed.*update rejected"):
        strategy.aggregate_train(1, [reply(0, nan), reply(1, nan)])


def test_multikrum_averages_the_n_minus_f_best(tmp_path: Path) -> None:
    strategy, _ = strategy_for(tmp_path, 5, "multikrum:1")
    got = aggregate(strategy, [reply(o, honest(o)) for o in range(4)] + [reply(4, sign_flipped_x10())])
    assert aggregator(strategy).num_nodes_to_select == 4  # type: ignore[attr-defined]
    assert distance(got, honest_mean(range(4))) < 1e-5


def test_fedadam_state_round_trips(tmp_path: Path) -> None:
    config = RunConfig(clients=2, strategy="fedadam", out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    strategy = build_strategy(config, RunRecorder(config, folder))
    strategy.configure_train(1, ArrayRecord(global_model()), ConfigRecord({}), NodesOnly(2))  # type: ignore[arg-type]
    strategy.aggregate_train(1, [reply(0, honest(0)), reply(1, honest(1))])
    saved = strategy_state(strategy)
    assert {k.split("/")[0] for k in saved} == {"m_t", "v_t"}
    fresh = build_strategy(config, RunRecorder(config, folder))
    restore_strategy_state(fresh, saved)
    again = strategy_state(fresh)
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)


# ---------------------------------------------------------------------------------------------- config keys
@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"aggregation": "median", "strategy": "fedadam"},
         "aggregation = 'median' with strategy = 'fedadam': only 'fedavg' aggregation works with fedadam"),
        ({"aggregation": "krum:1", "strategy": "fedprox"}, "Flower's FedProx and FedAdam combine updates by"),
        ({"aggregation": "krum:2", "clients": 6}, "only with more than 2F + 2 = 6 clients"),
        ({"aggregation": "multikrum:1", "clients": 4}, "more than 2F + 2 = 4 clients"),
        ({"aggregation": "trimmed-mean:0.1", "clients": 5}, "trims int(0.1 * 5) = 0 updates"),
        ({"aggregation": "trimmed-mean:0.5"}, "aggregation = 'trimmed-mean:0.5': trimmed-mean fraction must be in"),
        ({"aggregation": "trimmed-mean:0"}, "must be in (0, 0.5)"),
        ({"aggregation": "krum:x"}, "krum needs the number of Byzantine owners"),
        ({"aggregation": "mean"}, "expected fedavg, median, trimmed-mean:BETA, krum:F or multikrum:F"),
        ({"max-update-norm": -1}, "max-update-norm = -1.0: expected a number >= 0"),
        ({"max-update-norm": "nan"}, "max-update-norm = nan"),
    ],
)
def test_aggregation_keys_are_validated(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    assert len(info.value.problems) == 1, info.value.problems
    assert needle in info.value.problems[0]


def test_aggregation_problems_are_collected_with_the_others() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"aggregation": "krum:3", "clients": 5, "strategy": "fedprox", "max-update-norm": -1,
                                "lr": 0})
    assert len(info.value.problems) == 4, info.value.problems


@pytest.mark.parametrize("text", ["fedavg", "median", "trimmed-mean:0.25", "krum:1", "multikrum:0"])
def test_aggregation_round_trips(text: str) -> None:
    config = RunConfig.from_mapping({"aggregation": text, "clients": 5, "max-update-norm": 2.5})
    assert str(config.aggregation) == text and config.max_update_norm == 2.5
    assert config.to_mapping()["aggregation"] == text
    assert RunConfig.from_mapping(config.to_mapping()) == config
