"""Where each owner trained: the ClientApp names its Ray node, the recorder puts it into the report."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import fedmodel.clients.app as client_app
import pytest
from fedmodel.server.recorder import RunRecorder
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.report.run_folder import RunFolder

METRICS = {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5}


def fake_ray(node_id: str | None) -> types.ModuleType:
    """A stand-in for the ``ray`` module as a Ray worker sees it (None: imported, not initialised)."""
    module = types.ModuleType("ray")
    context = types.SimpleNamespace(get_node_id=lambda: node_id)
    module.is_initialized = lambda: node_id is not None  # type: ignore[attr-defined]
    module.get_runtime_context = lambda: context  # type: ignore[attr-defined]
    return module


def call(config: RunConfig, owner: int, message_type: str = MessageType.TRAIN) -> Message:
    model = build_model(config.model, 64, 10, seed=config.seed)
    meta = Metadata(run_id=1, message_id=f"m{owner}", src_node_id=0, dst_node_id=100 + owner, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type)
    msg = make_message(metadata=meta, content=RecordDict({
        "arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": 1})}))
    ctx = Context(run_id=1, node_id=100 + owner, state=RecordDict(), run_config=config.to_mapping(),
                  node_config={"partition-id": owner, "num-partitions": config.clients})
    handler = client_app.train if message_type == MessageType.TRAIN else client_app.evaluate
    return handler(msg, ctx)


def test_outside_ray_the_reply_has_no_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(clients=2, rounds=1, dp=False)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert client_app.PLACEMENT_RECORD_KEY not in call(config, 0).content
    monkeypatch.setitem(sys.modules, "ray", fake_ray(None))  # imported but not a Ray worker
    assert client_app.PLACEMENT_RECORD_KEY not in call(config, 0).content


def test_report_names_the_ray_node_each_owner_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig(clients=3, rounds=1, out=str(tmp_path), ray_address="127.0.0.1:6379", gpus_per_worker=0.5)
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    recorder.round_started(1)
    train = []
    for owner, node_id in ((0, "node-a"), (1, "node-b"), (2, None)):
        monkeypatch.setitem(sys.modules, "ray", fake_ray(node_id))
        reply = call(config, owner)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        train.append(reply)
    assert train[0].content.config_records["placement"]["ray-node"] == "node-a"
    assert "epsilon" in train[0].content["metrics"]  # the DP metrics are untouched
    recorder.train_replies(1, train)
    monkeypatch.setitem(sys.modules, "ray", fake_ray("node-c"))  # evaluation elsewhere is not training
    recorder.evaluate_replies(1, [call(config, o, MessageType.EVALUATE) for o in range(3)])
    recorder.central_evaluation(1, METRICS)
    report = recorder.report("completed")

    assert [(o["owner"], o["ray_node"]) for o in report["owners"]] == [(0, "node-a"), (1, "node-b"), (2, None)]
    assert report["resources"] == {"ray_address": "127.0.0.1:6379", "cpus_per_worker": 1, "gpus_per_worker": 0.5,
                                   "ray_nodes": ["node-a", "node-b"]}
    assert [o["owner"] for o in report["privacy"]["owners"]] == [0, 1, 2]


def test_a_private_ray_is_recorded_without_an_address(tmp_path: Path) -> None:
    config = RunConfig(clients=1, rounds=1, out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    resources = RunRecorder(config, folder).report("completed")["resources"]
    assert resources == {"ray_address": None, "cpus_per_worker": 1, "gpus_per_worker": 0.0, "ray_nodes": []}
