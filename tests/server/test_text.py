"""The coordinator's language-model path end to end in memory: Flower's FedAvg over the real ClientApp handlers."""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import fedmodel.clients.app as client_app
import pytest
import torch
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.text import ADAPTER_FILE, lora_settings, run_text
from flwr.app import Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedmodel.config import RunConfig
from fedmodel.llm import add_lora, load_adapter_state, load_base, payload_sizes, read_adapter
from fedmodel.report.run_folder import RunFolder

ORDERS = RDPAccountant.DEFAULT_ALPHAS


class InMemoryGrid:
    """Delivers each message to the ClientApp handler of its node, with one persistent Context per node."""

    def __init__(self, config: RunConfig) -> None:
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={"partition-id": i, "num-partitions": config.clients},
                          state=RecordDict(), run_config=config.to_mapping())
            for i, node in enumerate(range(101, 101 + config.clients))
        }
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            meta = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=node,
                            reply_to_message_id="", group_id="", created_at=time.time(), ttl=600.0,
                            message_type=message.metadata.message_type)
            delivered = make_message(metadata=meta, content=message.content)
            self.sent.append(delivered)
            handler = client_app.train if message.metadata.message_type == MessageType.TRAIN else client_app.evaluate
            replies.append(handler(delivered, self.contexts[node]))
        return replies[::-1]  # the last sampled first: arrival order is not owner order


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ServerApp's task identity, which Flower needs to build messages (set by Flower when it runs the app)."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.mark.usefixtures("server_identity")
def test_two_owners_fine_tune_the_tiny_bert_and_the_run_folder_holds_the_adapter(
    bert_dir: Path, tmp_path: Path, random_texts: Callable[..., list[str]]
) -> None:
    data = tmp_path / "reviews.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i, text in enumerate(random_texts(60, seed=11)):
            writer.writerow([text, "pos" if i % 2 else "neg"])
    config = RunConfig.from_mapping({
        "task": "classification", "model-path": str(bert_dir), "dataset": "file", "data-path": str(data),
        "label": "label", "clients": 2, "rounds": 2, "epsilon": 5.0, "max-length": 16, "batch-size": 8,
        "physical-batch-size": 8, "lr": 0.01, "device": "cpu", "out": str(tmp_path / "run"),
    })
    folder = RunFolder(tmp_path / "run")
    folder.create(config.to_mapping())
    grid = InMemoryGrid(config)
    report = run_text(grid, config, folder, RunRecorder(config, folder))  # type: ignore[arg-type]

    assert report["task"] == "classification" and [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(m.metadata.message_type == MessageType.TRAIN for m in grid.sent)  # the coordinator evaluates
    assert 0.0 <= report["final"]["accuracy"] <= 1.0
    adapter = read_adapter(tmp_path / "run" / ADAPTER_FILE)
    assert adapter.task == "classification" and adapter.num_labels == 2
    assert adapter.base_fingerprint == report["language_model"]["fingerprint"]
    for message in grid.sent:  # only the adapter travels, with the fingerprint
        assert set(message.content["arrays"].keys()) == set(adapter.state)
        assert message.content["config"]["base-fingerprint"] == adapter.base_fingerprint

    loaded = load_base(bert_dir, "classification", 2, seed=config.seed)
    model = add_lora(loaded.model, lora_settings(config), seed=config.seed)
    load_adapter_state(model, adapter.state)
    sizes = payload_sizes(model)
    payload = report["payload"]
    assert (payload["adapter_bytes"], payload["full_model_bytes"]) == (sizes.adapter_bytes, sizes.full_model_bytes)
    assert [(r["round"], r["owner"]) for r in payload["owners"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]  # owner order
    for row in payload["owners"]:  # the adapter's tensor bytes plus one small header per tensor
        assert sizes.adapter_bytes < row["bytes_sent"] == row["bytes_received"] < sizes.adapter_bytes + 256 * len(
            adapter.state)
    assert payload["max_ratio_to_full_model"] == pytest.approx(payload["max_bytes_sent_per_owner_per_round"]
                                                               / sizes.full_model_bytes)

    owners = report["privacy"]["owners"]
    assert [o["owner"] for o in owners] == [0, 1]
    for o in owners:
        rdp = compute_rdp(q=o["sample_rate"], noise_multiplier=o["noise_multiplier"], steps=o["steps"], orders=ORDERS)
        assert o["epsilon"] == pytest.approx(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=config.delta)[0],
                                             rel=1e-9)
        assert 0 < o["epsilon"] <= 5.0
    assert torch.is_tensor(next(iter(adapter.state.values())))
