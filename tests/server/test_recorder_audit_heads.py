"""The coordinator keeps each deployed node's audit-log head per round, and flags a count that went back."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedmodel.server.recorder import RunRecorder
from flwr.app import ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.protocol import AUDIT_HEAD_RECORD_KEY, OWNER_RECORD_KEY
from fedmodel.report.run_folder import RunFolder
from fedmodel.security.audit_log import AuditLog


def reply(count: int, kind: str = MessageType.EVALUATE) -> Message:
    meta = Metadata(run_id=1, message_id="r", src_node_id=5, dst_node_id=0, reply_to_message_id="m", group_id="1",
                    created_at=time.time(), ttl=600.0, message_type=kind)
    return make_message(metadata=meta, content=RecordDict({
        OWNER_RECORD_KEY: ConfigRecord({"name": "site-a"}),
        AUDIT_HEAD_RECORD_KEY: ConfigRecord({"count": count, "tip": "ab" * 32, "keyed": True}),
        "metrics": MetricRecord({"loss": 1.0, "accuracy": 0.5, "num-examples": 10.0})}))


def test_heads_go_to_the_coordinators_audit_log_and_report_and_a_rollback_is_flagged(tmp_path: Path) -> None:
    config = RunConfig(clients=1, rounds=2, out=str(tmp_path))
    folder = RunFolder(tmp_path)
    folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder, audit=AuditLog(tmp_path / "audit.log"))
    for server_round, count in ((1, 9), (2, 4)):
        recorder.round_started(server_round)
        recorder.evaluate_replies(server_round, [reply(count)])
    logged = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    heads = [e["fields"]["heads"][0] for e in logged if e["event"] == "node-audit-heads"]
    assert [(h["owner"], h["round"], h["count"]) for h in heads] == [("site-a", 1, 9), ("site-a", 2, 4)]
    assert heads[1]["rolled_back_from"] == 9 and "rolled_back_from" not in heads[0]
    report = recorder.report("completed")
    assert [h["count"] for h in report["node_audit_heads"]["site-a"]] == [9, 4]
