"""The run recorder fed with real ClientApp replies: counts, failures, report and the all-failed stop."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import fedmodel.clients.app as client_app
import pytest
from fedmodel.server.recorder import RunRecorder
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.errors import AllClientsFailedError
from fedmodel.models import build_model
from fedmodel.protocol import OWNER_RECORD_KEY
from fedmodel.report.run_folder import RunFolder


def replies(config: RunConfig, server_round: int) -> list[Message]:
    model = build_model(config.model, 64, 10, seed=config.seed)
    out = []
    for owner in range(config.clients):
        meta = Metadata(run_id=1, message_id=f"m{owner}", src_node_id=0, dst_node_id=100 + owner,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                        message_type=MessageType.TRAIN)
        msg = make_message(metadata=meta, content=RecordDict({
            "arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord({"server-round": server_round})}))
        ctx = Context(run_id=1, node_id=100 + owner, state=RecordDict(), run_config=config.to_mapping(),
                      node_config={"partition-id": owner, "num-partitions": config.clients})
        out.append(client_app.train(msg, ctx))
    return out


def test_failures_are_counted_and_named_per_round(tmp_path: Path) -> None:
    config = RunConfig(clients=3, rounds=1, inject_failure_owners=(2,), out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    recorder.round_started(1)
    recorder.train_replies(1, replies(config, 1))
    recorder.central_evaluation(1, {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5})
    report = recorder.report("completed")
    row = report["rounds"][0]
    assert (row["num_replies"], row["num_failures"]) == (2, 1)
    assert row["failures"][0]["owner"] == 2
    assert [o["owner"] for o in report["privacy"]["owners"]] == [0, 1]
    assert all(0 < o["epsilon"] <= 3.0 for o in report["privacy"]["owners"])
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["num_failures"] == "1" and rows[0]["num_replies"] == "2"


def test_a_round_where_every_owner_failed_stops_the_run(tmp_path: Path) -> None:
    config = RunConfig(clients=2, rounds=1, inject_failure_owners=(0, 1), out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    with pytest.raises(AllClientsFailedError, match="all 2 owners failed.*injected failure"):
        recorder.train_replies(1, replies(config, 1))


def test_report_has_no_nan(tmp_path: Path) -> None:
    config = RunConfig(clients=1, rounds=1, out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    recorder.central_evaluation(0, {"loss": float("nan"), "accuracy": 0.1, "precision": 0.0, "recall": 0.1, "f1": 0.0})
    report = recorder.report("failed", "stopped early")
    assert report["initial"]["test_loss"] is None
    assert report["final"] is None and report["status"] == "failed"


def test_totals_across_runs_and_refusals_reach_the_report_and_the_coordinators_audit_log(tmp_path: Path) -> None:
    from fedmodel.security.audit_log import AuditLog, read_entries, verify

    config = RunConfig(clients=2, rounds=1, epsilon=1.0, ledger=str(tmp_path / "ledger"), out=str(tmp_path / "run"))
    first = RunRecorder(config, RunFolder(tmp_path / "run"))
    first.train_replies(1, replies(config, 1))
    owners = first.report("completed")["privacy"]["owners"]
    assert [o["owner"] for o in owners] == [0, 1]
    for o in owners:
        assert o["epsilon_total"] == pytest.approx(o["epsilon"]) and o["budget_epsilon"] == 1.0
        assert o["remaining_epsilon"] == pytest.approx(1.0 - o["epsilon"])
    assert first.report("completed")["privacy"]["ledger"] == f"simulation ledger in {tmp_path / 'ledger'}"

    audit = AuditLog(tmp_path / "again" / "audit.log")
    second = RunRecorder(config, RunFolder(tmp_path / "again"), audit=audit)
    with pytest.raises(AllClientsFailedError, match="privacy budget is used up"):
        second.train_replies(1, replies(config, 1))  # the same owners again: nothing remains
    refusals = second.report("failed")["privacy"]["refusals"]
    assert [(r["round"], r["owner"], r["rule"]) for r in refusals] == [(1, 0, "budget"), (1, 1, "budget")]
    assert all("remaining 0.00" in r["reason"] for r in refusals)
    assert verify(tmp_path / "again" / "audit.log", require_head=True).ok
    entry = read_entries(tmp_path / "again" / "audit.log")[0][0]
    assert entry.event == "train-replies" and entry.fields["replies"] == []
    assert [f["owner"] for f in entry.fields["failures"]] == [0, 1]


# ---------------------------------------------------------------- owners named by their admitted key (deployment)
def deployed_reply(msg: Message, claimed: str, epsilon: float) -> Message:
    """A deployed owner's train reply as fedmodel.clients.app writes it: the name is whatever the node puts there."""
    metrics = {"num-examples": 50.0, "train-loss": 0.5, "epsilon": epsilon, "budget-epsilon": 3.0,
               "noise-multiplier": 1.1, "sample-rate": 0.3, "steps": 4.0, "max-grad-norm": 1.0, "delta": 1e-5}
    return Message(RecordDict({"metrics": MetricRecord(metrics),  # type: ignore[arg-type]
                               OWNER_RECORD_KEY: ConfigRecord({"name": claimed})}), reply_to=msg)


class SitesGrid:
    """Nodes answering with prepared replies: ``answers[node](msg)``; Flower sets a reply's src_node_id."""

    def __init__(self, answers: dict[int, Callable[[Message], Message]]) -> None:
        self.answers = answers

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self.answers[int(m.metadata.dst_node_id)](m) for m in messages]


def test_a_node_claiming_another_sites_name_is_reported_under_its_registry_name(tmp_path: Path) -> None:
    from fedmodel.server.identity import IdentifiedGrid, NodeNames

    from fedmodel.deployment.coordinator import NodeEntry
    from fedmodel.security.audit_log import AuditLog, read_entries

    registry = tmp_path / "coordinator" / "nodes.json"
    registry.parent.mkdir()
    sites = (("site-a", 11), ("site-b", 12), ("site-d", 13))
    registry.write_text(json.dumps({"nodes": [NodeEntry(n, i, "f" * 64, "ecdsa-sha2-nistp384 AAAA", "allowed").to_record()
                                              for n, i in sites]}))
    config = RunConfig(clients=4, rounds=1, epsilon=3.0, out=str(tmp_path / "run"))
    folder = RunFolder(tmp_path / "run")
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder, audit=AuditLog(tmp_path / "run" / "audit.log"))
    refusal = "owner site-b: refused by the owner's privacy policy (dp-required): the run has dp = false"
    grid = IdentifiedGrid(SitesGrid({
        11: lambda m: deployed_reply(m, "site-b", 2.9),  # site-a poses as site-b
        12: lambda m: deployed_reply(m, "site-b", 0.7),  # the real site-b
        99: lambda m: deployed_reply(m, "site-c", 0.8),  # a node the coordinator never admitted
        13: lambda m: Message(Error(code=0, reason=refusal), reply_to=m),  # site-d's error, in site-b's name
    }), NodeNames(registry), recorder.identity_claim)
    messages = [make_message(metadata=Metadata(
        run_id=1, message_id=f"to-{n}", src_node_id=0, dst_node_id=n, reply_to_message_id="", group_id="1",
        created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN),
        content=RecordDict({"config": ConfigRecord({"server-round": 1})})) for n in (11, 12, 99, 13)]
    recorder.round_started(1)
    answered = grid.send_and_receive(messages)
    recorder.train_sent(1, messages, answered)
    recorder.train_replies(1, answered)
    recorder.central_evaluation(1, {"loss": 1.0, "accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5})
    report = recorder.report("completed")

    row = report["rounds"][0]
    assert row["replied"] == ["node 99", "site-a", "site-b"]
    assert [(f["node_id"], f["owner"]) for f in row["failures"]] == [(13, "site-d")]
    assert [(r["owner"], r["rule"]) for r in report["privacy"]["refusals"]] == [("site-d", "dp-required")]
    owners = {o["owner"]: o for o in report["privacy"]["owners"]}
    assert (owners["site-a"]["epsilon"], owners["site-a"]["claimed_name"]) == (2.9, ["site-b"])
    assert owners["site-b"]["epsilon"] == 0.7 and "claimed_name" not in owners["site-b"]  # not overwritten
    assert owners["node 99"]["claimed_name"] == ["site-c"]
    assert [(c["node_id"], c["owner"], c["claimed_name"]) for c in report["identity"]["claims"]] == [
        (11, "site-a", "site-b"), (99, "node 99", "site-c"), (13, "site-d", "site-b")]
    entries, _ = read_entries(tmp_path / "run" / "audit.log")
    warned = [(e.fields["node_id"], e.fields["claimed_name"]) for e in entries if e.event == "identity-claim"]
    assert warned == [(11, "site-b"), (99, "site-c"), (13, "site-b")]

    # a site admitted while the run goes on is named as soon as it answers
    registry.write_text(json.dumps({"nodes": [NodeEntry("site-e", 99, "e" * 64, "k", "allowed").to_record()]}))
    (again,) = grid.send_and_receive(messages[2:3])
    assert again.content[OWNER_RECORD_KEY]["name"] == "site-e"


# ---------------------------------------------------------------- deployed owners' DP evaluation in the report

def client_app_reply(folder: Path, name: str, node_id: int, message_type: str, **settings: object) -> Message:
    """The reply of a deployed owner's real ClientApp (its own file, state folder and release settings)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(node_id)
    lines = [",".join([f"f{i}" for i in range(64)] + ["digit"])]
    lines += [",".join([f"{v:.3f}" for v in rng.random(64)] + [str(i % 10)]) for i in range(80)]
    (folder / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = RunConfig(clients=2, rounds=1, out=str(folder / "run"))
    meta = Metadata(run_id=1, message_id=f"m{node_id}", src_node_id=0, dst_node_id=node_id, reply_to_message_id="",
                    group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type)
    msg = make_message(metadata=meta, content=RecordDict({
        "arrays": ArrayRecord(build_model("logreg", 64, 10, seed=1).state_dict()),
        "config": ConfigRecord({"server-round": 1, "schema-features": 64,
                                "schema-labels": "\x1f".join(str(i) for i in range(10))})}))
    node = {"data-path": str(folder / "data.csv"), "label": "digit", "owner-name": name, "budget-epsilon": 3.0,
            "device": "cpu", "state-dir": str(folder), **settings}
    ctx = Context(run_id=1, node_id=node_id, state=RecordDict(), run_config=config.to_mapping(),
                  node_config=node)  # type: ignore[arg-type]
    handler = client_app.train if message_type == MessageType.TRAIN else client_app.evaluate
    return handler(msg, ctx)


def test_dp_evaluations_and_refusals_of_deployed_owners_reach_the_report(tmp_path: Path) -> None:
    """Mixed owner settings aggregate (one metric layout), and the report says which numbers are DP releases."""
    from fedmodel.server.strategy import build_strategy

    config = RunConfig(clients=3, rounds=1, out=str(tmp_path / "run"))
    recorder = RunRecorder(config, RunFolder(tmp_path / "run"))
    strategy = build_strategy(config, recorder)
    recorder.train_replies(1, [client_app_reply(tmp_path / "a", "site-a", 11, MessageType.TRAIN),
                               client_app_reply(tmp_path / "b", "site-b", 12, MessageType.TRAIN,
                                              **{"exact-replies": True})])
    evaluated = [client_app_reply(tmp_path / "a", "site-a", 11, MessageType.EVALUATE),
                 client_app_reply(tmp_path / "b", "site-b", 12, MessageType.EVALUATE, evaluation="exact"),
                 client_app_reply(tmp_path / "c", "site-c", 13, MessageType.EVALUATE, evaluation="off")]
    aggregated = strategy.aggregate_evaluate(1, evaluated)
    assert aggregated is not None and 0.0 <= float(aggregated["accuracy"]) <= 1.0
    report = recorder.report("completed")
    owners = {o["owner"]: o for o in report["owners"]}
    assert owners["site-a"]["evaluation_dp"] is True and owners["site-a"]["precision"] is None
    assert owners["site-a"]["exact_replies"] is False and owners["site-a"]["train_loss"] is None
    assert owners["site-b"]["evaluation_dp"] is False and owners["site-b"]["precision"] is not None
    assert owners["site-b"]["exact_replies"] is True and owners["site-b"]["train_loss"] is not None
    assert [(r["owner"], r["rule"]) for r in report["privacy"]["refusals"]] == [("site-c", "evaluation")]
    assert any("evaluation_dp" in note for note in report["notes"])
