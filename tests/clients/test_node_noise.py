"""A deployed node's noise, measured through the real ClientApp handlers: real, unpredictable, fresh each time.

The owner's rows have all-zero features, so the gradient of every weight of the logistic regression
is zero for every row whatever its label: the weights' update is DP-SGD's noise alone,
``-lr / B * sum over steps of N(0, (sigma C)^2)``. The tests read that noise off the update the node
sends, as the coordinator would.
"""

from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import fedmodel.clients.app as client_app
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.privacy.mechanism import OpacusDPSGD
from fedmodel.privacy.randomness import round_seed

ROWS, BATCH, FEATURES, CLASSES = 60, 15, 64, 10
CONFIG = RunConfig(clients=3, rounds=2, epsilon=8.0, batch_size=BATCH, lr=0.5, run_id="run-a")
SCHEMA = {"schema-features": FEATURES, "schema-labels": "\x1f".join(str(i) for i in range(CLASSES))}
OWNER = "site-a"


def train_message(server_round: int) -> Message:
    model = build_model("logreg", FEATURES, CLASSES, seed=42)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round, **SCHEMA})})  # type: ignore[dict-item]
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN)
    return make_message(metadata=meta, content=content)


def zero_rows(path: Path) -> Path:
    """The owner's file: every feature 0, labels cycling through the classes."""
    header = ",".join([f"f{i}" for i in range(FEATURES)] + ["digit"])
    rows = [",".join(["0"] * FEATURES + [str(i % CLASSES)]) for i in range(ROWS)]
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def node(folder: Path, config: RunConfig = CONFIG) -> Context:
    """A deployed node (its own data file, settings and state folder) serving ``config``."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"data-path": str(zero_rows(folder / "site-a.csv")), "label": "digit", "owner-name": OWNER,
                "budget-epsilon": 8.0, "delta": 1e-6, "device": "cpu", "state-dir": str(folder / "state")}
    return Context(run_id=1, node_id=7, node_config=settings, state=RecordDict(),  # type: ignore[arg-type]
                   run_config=config.to_mapping())


def simulated(config: RunConfig = CONFIG) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": config.clients},
                   state=RecordDict(), run_config=config.to_mapping())


def weight_update(reply: Message, sent: Message) -> np.ndarray:
    """What the owner added to the global weights (the coordinator's view of its update)."""
    assert not reply.has_error(), reply.error.reason
    return reply.content["arrays"]["0.weight"].numpy() - sent.content["arrays"]["0.weight"].numpy()


def steps_and_expected_batch() -> tuple[int, int]:
    """DP-SGD's steps in a round and its expected batch size, from the run's settings (Poisson rate 1/batches)."""
    batches = math.ceil(ROWS / BATCH)
    return CONFIG.local_epochs * batches, int(ROWS * (1 / batches))


def measured_over_claimed(reply: Message, sent: Message) -> float:
    """The standard deviation of the noise the node really added over the one its reply claims.

    The claim: noise multiplier sigma and clipping bound C per step, ``steps`` steps, each scaled by
    lr / B, so each weight's noise has standard deviation ``lr * sigma * C * sqrt(steps) / B``.
    """
    metrics = reply.content["metrics"]
    sigma, clip = float(metrics["noise-multiplier"]), float(metrics["max-grad-norm"])
    steps, expected_batch = steps_and_expected_batch()
    claimed = CONFIG.lr * sigma * clip * math.sqrt(steps) / expected_batch
    noise = weight_update(reply, sent).ravel()  # 640 weights, each pure noise
    return float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)) / claimed)


def noise_predicted_from_the_run_seed(reply: Message, server_round: int) -> np.ndarray:
    """The coordinator's guess: the weights' noise regenerated from what it knows (run seed, the owner's name
    in the reply, the round, sigma and C), as a node seeding Opacus with ``round_seed`` would draw it."""
    metrics = reply.content["metrics"]
    std = float(metrics["noise-multiplier"]) * float(metrics["max-grad-norm"])
    steps, expected_batch = steps_and_expected_batch()
    name = str(reply.content.config_records["owner-info"]["name"])
    generator = torch.Generator().manual_seed(round_seed(CONFIG.seed, zlib.crc32(name.encode()), server_round))
    total = torch.zeros(CLASSES, FEATURES)
    for _ in range(steps):  # Opacus draws each parameter's noise in turn: the weights, then the bias
        total += torch.normal(0.0, std, size=(CLASSES, FEATURES), generator=generator)
        torch.normal(0.0, std, size=(CLASSES,), generator=generator)
    return (-CONFIG.lr / expected_batch * total).numpy()


def test_the_coordinator_cannot_regenerate_a_deployed_nodes_noise_from_the_run_seed(tmp_path: Path) -> None:
    """At 3f11166 the prediction matched the update to float precision (correlation 1.0)."""
    sent = train_message(1)
    reply = client_app.train(sent, node(tmp_path))
    update = weight_update(reply, sent).ravel()
    predicted = noise_predicted_from_the_run_seed(reply, 1).ravel()
    assert abs(np.corrcoef(update, predicted)[0, 1]) < 0.25  # 640 independent pairs: |r| ~ 0.04


def test_two_deployed_nodes_with_the_same_run_seed_and_rows_send_different_noise(tmp_path: Path) -> None:
    """At 3f11166 both updates were identical, bit for bit."""
    sent = train_message(1)
    first = weight_update(client_app.train(sent, node(tmp_path / "a")), sent)
    second = weight_update(client_app.train(sent, node(tmp_path / "b")), sent)
    assert not np.array_equal(first, second)
    assert abs(np.corrcoef(first.ravel(), second.ravel())[0, 1]) < 0.25


def test_a_round_sent_again_gets_fresh_noise_and_is_charged_again(tmp_path: Path) -> None:
    """At 3f11166 the second attempt sent the first one's update again, charged nothing more."""
    ctx = node(tmp_path)
    sent = train_message(1)
    first_reply = client_app.train(sent, ctx)
    again_reply = client_app.train(train_message(1), ctx)
    first, again = weight_update(first_reply, sent), weight_update(again_reply, sent)
    assert abs(np.corrcoef(first.ravel(), again.ravel())[0, 1]) < 0.25
    assert float(again_reply.content["metrics"]["epsilon"]) > float(first_reply.content["metrics"]["epsilon"])
    steps, _ = steps_and_expected_batch()
    assert client_app.load_privacy(ctx).steps == 2 * steps


def test_the_noise_a_deployed_node_adds_is_the_noise_it_reports(tmp_path: Path) -> None:
    sent = train_message(1)
    reply = client_app.train(sent, node(tmp_path))
    assert float(reply.content["metrics"]["noise-multiplier"]) > 0.1
    assert 0.8 <= measured_over_claimed(reply, sent) <= 1.25  # 640 draws: the estimate's relative error ~3%


def test_the_measurement_catches_a_node_that_reports_noise_and_adds_none(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above, against a node whose optimizer adds no noise while its reply reports the plan's sigma."""
    honest_wrap = OpacusDPSGD.wrap

    def wrap_without_noise(self, *args):  # type: ignore[no-untyped-def]
        model, optimizer, loader = honest_wrap(self, *args)
        optimizer.noise_multiplier = 0.0  # what the no-noise fault does (fedmodel.owner)
        return model, optimizer, loader

    monkeypatch.setattr(OpacusDPSGD, "wrap", wrap_without_noise)
    sent = train_message(1)
    reply = client_app.train(sent, node(tmp_path))
    assert float(reply.content["metrics"]["noise-multiplier"]) > 0.1  # it still claims the noise
    assert measured_over_claimed(reply, sent) < 0.01


def test_a_simulated_owner_is_still_reproducible_from_the_run_seed() -> None:
    sent = train_message(1)
    first = weight_update(client_app.train(sent, simulated()), sent)
    again = weight_update(client_app.train(train_message(1), simulated()), sent)
    other_seed = RunConfig(**{**CONFIG.__dict__, "seed": CONFIG.seed + 1})
    other = weight_update(client_app.train(train_message(1), simulated(other_seed)), sent)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def feature_sums_query() -> Message:
    bounds = {"bounds-lo": [-1.0] * FEATURES, "bounds-hi": [1.0] * FEATURES}
    record = ConfigRecord({"query": "feature-sums", "scaling-noise": 20.0, **bounds, **SCHEMA})  # type: ignore[dict-item]
    meta = Metadata(run_id=1, message_id="q", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="0",
                    created_at=time.time(), ttl=600.0, message_type=MessageType.QUERY)
    return make_message(metadata=meta, content=RecordDict({"config": record}))


def released_sums(reply: Message) -> np.ndarray:
    assert not reply.has_error(), reply.error.reason
    return np.asarray(list(reply.content["metrics"]["sums"]), np.float64)


def test_a_deployed_nodes_scaling_statistics_noise_is_fresh_and_not_the_run_seeds(tmp_path: Path) -> None:
    """Every feature is 0, so the exact sums are known: the release minus them is the noise alone.
    At 3f11166 two nodes released the same noise, the run seed's (numpy's default_rng(round_seed(...)))."""
    first = released_sums(client_app.query(feature_sums_query(), node(tmp_path / "a")))
    second = released_sums(client_app.query(feature_sums_query(), node(tmp_path / "b")))
    exact = np.concatenate([np.full(FEATURES, ROWS), np.zeros(FEATURES), np.zeros(FEATURES)])
    seeded = np.random.default_rng(round_seed(CONFIG.seed, zlib.crc32(OWNER.encode()), 0))
    predicted = seeded.normal(0.0, 20.0 * math.sqrt(3 * FEATURES), size=(3, FEATURES)).ravel()
    assert abs(np.corrcoef(first - exact, second - exact)[0, 1]) < 0.35  # 192 draws: |r| ~ 0.07
    assert abs(np.corrcoef(first - exact, predicted)[0, 1]) < 0.35
    assert np.std(first - exact) == pytest.approx(20.0 * math.sqrt(3 * FEATURES), rel=0.25)


def test_a_simulated_owners_scaling_statistics_stay_reproducible() -> None:
    config = RunConfig(clients=3, rounds=2, epsilon=8.0, scaling="zscore")
    query = feature_sums_query()
    assert np.array_equal(released_sums(client_app.query(query, simulated(config))),
                          released_sums(client_app.query(query, simulated(config))))
