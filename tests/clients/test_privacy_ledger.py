"""The owner's ledger, policy and audit trail through the real ClientApp handlers, real Messages and Contexts."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import fedmodel.clients.app as client_app
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from typer.testing import CliRunner

from fedmodel.cli import app as cli
from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.privacy import epsilon_spent
from fedmodel.privacy.accounting import calibrate_noise
from fedmodel.privacy.ledger import PrivacyLedger, ledger_path, read_key
from fedmodel.privacy.owner_ledger import min_useful_epsilon
from fedmodel.security.audit_log import read_entries, verify

SCHEMA = {"schema-features": 64, "schema-labels": "\x1f".join(str(i) for i in range(10))}


def message(server_round: int, message_type: str = MessageType.TRAIN, **config: object) -> Message:
    model = build_model("logreg", 64, 10, seed=42)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round, **config})})  # type: ignore[dict-item]
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=600.0, message_type=message_type)
    return make_message(metadata=meta, content=content)


def simulated(config: RunConfig, run_id: int) -> Context:
    return Context(run_id=run_id, node_id=7, node_config={"partition-id": 0, "num-partitions": config.clients},
                   state=RecordDict(), run_config=config.to_mapping())


def error(reply: Message) -> str:
    return reply.error.reason if reply.has_error() else ""


def audit_events(folder: Path) -> list[tuple[str, dict[str, object]]]:
    result = verify(folder / "audit.log", require_head=True)
    assert result.ok, result.problems
    entries, skipped = read_entries(folder / "audit.log")
    assert not skipped
    return [(e.event, dict(e.fields)) for e in entries]


def test_runs_sharing_a_ledger_calibrate_on_what_remains_then_refuse(tmp_path: Path) -> None:
    ledger_dir = tmp_path / "ledger"
    first_config = RunConfig(clients=2, rounds=1, epsilon=1.0, ledger=str(ledger_dir), out=str(tmp_path / "r1"))
    first = client_app.train(message(1), simulated(first_config, 1))
    assert not first.has_error(), error(first)
    m1 = first.content["metrics"]
    assert float(m1["ledger-epsilon"]) == pytest.approx(float(m1["epsilon"])) and float(m1["epsilon"]) <= 1.0

    # the second run asks for a total of 2: it gets what remains, with more noise than a fresh run of 2 would
    second_config = RunConfig(clients=2, rounds=1, epsilon=2.0, ledger=str(ledger_dir), out=str(tmp_path / "r2"))
    second = client_app.train(message(1), simulated(second_config, 2))
    assert not second.has_error(), error(second)
    m2 = second.content["metrics"]
    fresh = calibrate_noise(2.0, 1e-5, float(m2["sample-rate"]), int(m2["steps"]))
    assert float(m2["noise-multiplier"]) > fresh
    history = [(float(m["noise-multiplier"]), float(m["sample-rate"]), int(m["steps"])) for m in (m1, m2)]
    total = epsilon_spent(history, 1e-5)
    assert float(m2["ledger-epsilon"]) == pytest.approx(total, rel=1e-9)
    assert 2.0 - min_useful_epsilon(2.0) < total <= 2.0
    assert float(m2["epsilon"]) < total  # this run's own epsilon, not the total

    third_config = RunConfig(clients=2, rounds=1, epsilon=2.0, ledger=str(ledger_dir), out=str(tmp_path / "r3"))
    third = client_app.train(message(1), simulated(third_config, 3))
    assert third.has_error()
    assert error(third).startswith("owner 0: the privacy budget is used up")
    assert f"remaining {2.0 - total:.4f}" in error(third)

    with PrivacyLedger(ledger_path(ledger_dir), create=False) as ledger:
        assert [e.status for e in ledger.entries("0")] == ["committed", "committed"]  # the refusal wrote nothing
        assert ledger.spent("0") == pytest.approx(total, rel=1e-9)
    events = audit_events(ledger_dir)
    assert [e for e, _ in events] == ["run-start", "plan", "reserve", "commit"] * 2 + ["run-start", "refuse"]
    reserve = events[6][1]
    assert reserve["epsilon_total"] == pytest.approx(total) and reserve["remaining_epsilon"] == pytest.approx(2 - total)
    assert events[-1][1]["rule"] == "budget" and events[-1][1]["run_id"] == "3"


def feature_sums_query(config: RunConfig) -> Message:
    from fedmodel.data import federated_split
    from fedmodel.data.prepare import bounds_to_config
    from fedmodel.data.scaling import public_bounds

    split = federated_split(config)
    bounds = public_bounds(split.test().x.astype(np.float64))
    record = ConfigRecord({"query": "feature-sums", "scaling-noise": 5.0, **bounds_to_config(bounds),
                           **split.schema.to_config()})
    meta = Metadata(run_id=1, message_id="q", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="0",
                    created_at=time.time(), ttl=600.0, message_type=MessageType.QUERY)
    return make_message(metadata=meta, content=RecordDict({"config": record}))


def test_scaling_statistics_are_in_the_ledger_and_one_run_totals_its_own_epsilon(tmp_path: Path) -> None:
    config = RunConfig(clients=2, rounds=2, scaling="zscore", ledger=str(tmp_path), out=str(tmp_path / "r"))
    ctx = simulated(config, 1)
    assert not client_app.query(feature_sums_query(config), ctx).has_error()
    for server_round in (1, 2):
        reply = client_app.train(message(server_round), ctx)
        assert not reply.has_error(), error(reply)
    metrics = reply.content["metrics"]
    assert float(metrics["ledger-epsilon"]) == pytest.approx(float(metrics["epsilon"]), rel=1e-9)
    assert float(metrics["epsilon"]) <= 3.0
    with PrivacyLedger(ledger_path(tmp_path), create=False) as ledger:
        assert [(e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.entries("0")][0] == (5.0, 1.0, 1)
        assert len(ledger.entries("0")) == 3
    reserved = [f["what"] for e, f in audit_events(tmp_path) if e == "reserve"]
    assert reserved == ["scaling statistics", "dp-sgd", "dp-sgd"]


def test_a_crash_between_reservation_and_commit_leaves_the_round_spent(tmp_path: Path) -> None:
    config = RunConfig(clients=2, rounds=2, ledger=str(tmp_path), inject_failure_owners=(0,), out=str(tmp_path / "r"))
    reply = client_app.train(message(1), simulated(config, 1))
    assert reply.has_error() and "injected failure" in error(reply)
    with PrivacyLedger(ledger_path(tmp_path), create=False) as ledger:
        entries = ledger.entries("0")
        assert [e.status for e in entries] == ["reserved"]
        assert ledger.spent("0") == pytest.approx(epsilon_spent(ledger.history("0"), config.delta))
        assert ledger.spent("0") > 0


# ---------------------------------------------------------------- a deployed node: its ledger, policy, audit log

def shard_csv(path: Path, rows: int = 60) -> Path:
    rng = np.random.default_rng(0)
    header = ",".join([f"f{i}" for i in range(64)] + ["digit"])
    lines = [header] + [",".join([f"{v:.3f}" for v in rng.random(64)] + [str(i % 10)]) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def deployed(config: RunConfig, state: Path, run_id: int = 1, **node: object) -> Context:
    data = state.parent / "site-a.csv"
    if not data.exists():
        shard_csv(data)
    node_config = {"data-path": str(data), "label": "digit", "owner-name": "site-a", "budget-epsilon": 1.0,
                   "delta": 1e-6, "device": "cpu", "state-dir": str(state), "coordinator": "127.0.0.1:9091", **node}
    return Context(run_id=run_id, node_id=7, node_config=node_config, state=RecordDict(),  # type: ignore[arg-type]
                   run_config=config.to_mapping())


@pytest.mark.parametrize(("node", "rule", "detail"), [
    ({"min-noise-multiplier": 50.0}, "min-noise-multiplier", "below the minimum 50"),
    ({"max-epsilon-per-run": 0.5}, "max-epsilon-per-run", "above the maximum 0.5 per run"),
    ({"require-secure-aggregation": True}, "require-secure-aggregation", "does not declare secure aggregation"),
])
def test_a_run_breaking_the_owners_policy_is_refused_naming_the_rule(tmp_path: Path, node: dict[str, object],
                                                                     rule: str, detail: str) -> None:
    state = tmp_path / "state"
    config = RunConfig(clients=3, rounds=2, epsilon=8.0, batch_size=15, out="/runs/x")  # capped at the budget 1
    reply = client_app.train(message(1, **SCHEMA), deployed(config, state, **node))
    assert reply.has_error()
    assert error(reply).startswith(f"owner site-a: refused by the owner's privacy policy ({rule}): ")
    assert detail in error(reply)
    with PrivacyLedger(ledger_path(state), create=False) as ledger:
        assert ledger.owners() == []  # nothing reserved, nothing spent
    refusal = audit_events(state)[-1]
    assert refusal[0] == "refuse" and refusal[1]["rule"] == rule and refusal[1]["owner"] == "site-a"


def test_dp_is_required_unless_the_owner_allows_runs_without_it(tmp_path: Path) -> None:
    config = RunConfig(clients=3, rounds=1, dp=False)
    refused = client_app.train(message(1, **SCHEMA), deployed(config, tmp_path / "a"))
    assert "(dp-required)" in error(refused) and "trains only with DP" in error(refused)
    allowed = client_app.train(message(1, **SCHEMA), deployed(config, tmp_path / "b", **{"allow-no-dp": True}))
    assert not allowed.has_error(), error(allowed)
    assert "epsilon" not in allowed.content["metrics"]
    start = audit_events(tmp_path / "b")[0]
    assert start[0] == "run-start" and start[1]["dp"] is False


def test_a_deployed_owner_totals_its_runs_in_its_own_encrypted_ledger(tmp_path: Path) -> None:
    state, key_file = tmp_path / "state", tmp_path / "ledger.key"
    key_file.write_bytes(bytes(range(32)))
    config = RunConfig(clients=3, rounds=1, epsilon=0.8, batch_size=15, out="/runs/a")  # 0.8 of the node's 1
    node = {"ledger-key": str(key_file), "evaluation": "exact"}  # training only: no DP evaluation planned
    noise = []
    for run_id in (1, 2):
        reply = client_app.train(message(1, **SCHEMA), deployed(config, state, run_id, **node))
        assert not reply.has_error(), error(reply)
        metrics = reply.content["metrics"]
        assert float(metrics["epsilon"]) <= 0.8 and float(metrics["ledger-budget"]) == 1.0
        noise.append(float(metrics["noise-multiplier"]))
    assert noise[1] > noise[0]  # the second run got what remained of 1, not another 0.8
    assert 1.0 - min_useful_epsilon(1.0) < float(metrics["ledger-epsilon"]) <= 1.0
    third = client_app.train(message(1, **SCHEMA), deployed(config, state, 3, **node))
    assert "the privacy budget is used up" in error(third)

    shown = CliRunner().invoke(cli, ["ledger", "show", "--state-dir", str(state), "--key-file", str(key_file),
                                     "--format", "json"])
    assert shown.exit_code == 0, shown.output
    owner = json.loads(shown.output)["owners"][0]
    assert owner["owner"] == "site-a" and owner["committed"] == 2 and owner["runs"] == ["1", "2"]
    assert owner["epsilon"] == pytest.approx(float(metrics["ledger-epsilon"]), rel=1e-9)
    assert b"site-a" not in ledger_path(state).read_bytes() and read_key(key_file) == bytes(range(32))

    events = audit_events(state)
    start = events[0][1]
    data = tmp_path / "site-a.csv"
    assert start["data"] == {"name": "site-a.csv", "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert start["coordinator"] == "coordinator 127.0.0.1:9091, run folder /runs/a"
    assert [e for e, f in events if e in ("reserve", "commit")] == ["reserve", "commit"] * 2
    assert events[-1][0] == "refuse"
    verified = CliRunner().invoke(cli, ["audit-log", "verify", str(state / "audit.log")])
    assert verified.exit_code == 0, verified.output


def test_a_round_sent_again_to_a_deployed_node_is_charged_again_and_a_resumed_run_keeps_its_run_id(
        tmp_path: Path) -> None:
    """A deployed node's noise is fresh each time (fedmodel.privacy.randomness): a round sent again is a second
    release of it, never a free replay (at 3f11166 it was not reserved again, yet its noise was the same)."""
    state = tmp_path / "state"
    config = RunConfig(clients=3, rounds=2, epsilon=1.0, batch_size=15, out="/runs/a", run_id="run-a")
    ctx = deployed(config, state, run_id=11)
    first = client_app.train(message(1, **SCHEMA), ctx)
    again = client_app.train(message(1, **SCHEMA), deployed(config, state, run_id=12))  # a resumed Flower run
    assert not first.has_error() and not again.has_error(), error(first) + error(again)
    assert float(again.content["metrics"]["epsilon"]) > float(first.content["metrics"]["epsilon"])
    assert float(again.content["metrics"]["ledger-epsilon"]) > float(first.content["metrics"]["ledger-epsilon"])
    assert (again.content["arrays"]["0.weight"].numpy() != first.content["arrays"]["0.weight"].numpy()).any()
    with PrivacyLedger(ledger_path(state), create=False) as ledger:
        assert [(e.run_id, e.status) for e in ledger.entries("site-a")] == [("run-a", "committed")] * 2
    reserved = [(f["what"], f["round"]) for e, f in audit_events(state) if e == "reserve"]
    assert reserved == [("dp-sgd", 1), ("dp-sgd, round sent again (fresh noise)", 1)]


def test_a_deleted_ledger_is_refused_by_every_message_and_replies_carry_the_audit_head(tmp_path: Path) -> None:
    from fedmodel.protocol import AUDIT_HEAD_RECORD_KEY
    from fedmodel.security.audit_log import default_key_path, load_key, open_keyed

    state = tmp_path / "state"
    key_file = default_key_path(state)
    open_keyed(state / "audit.log", key_file, create_key=True)  # what fedmodel node start makes
    config = RunConfig(clients=3, rounds=1, epsilon=0.5, batch_size=15, out="/runs/a")
    node = {"audit-key": str(key_file)}
    first = client_app.train(message(1, **SCHEMA), deployed(config, state, 1, **node))
    assert not first.has_error(), error(first)
    head = first.content[AUDIT_HEAD_RECORD_KEY]
    entries = (state / "audit.log").read_bytes().splitlines()
    assert head["count"] == len(entries) and head["tip"] == json.loads(entries[-1])["mac"] and head["keyed"]
    assert verify(state / "audit.log", key=load_key(key_file), require_head=True).ok

    from fedmodel.privacy.owner_ledger import open_ledger

    open_ledger.cache_clear()  # each message is a fresh flwr-clientapp process in deployment
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger_path(state)) + suffix).unlink(missing_ok=True)
    spent = float(first.content["metrics"]["ledger-epsilon"])
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        handler = client_app.train if kind == MessageType.TRAIN else client_app.evaluate
        reply = handler(message(2, kind, **SCHEMA), deployed(config, state, 2, **node))
        assert reply.has_error(), kind
        assert f"shows epsilon {spent:.4f} spent" in error(reply) and str(ledger_path(state)) in error(reply)
    assert not ledger_path(state).exists()


def test_a_deployed_owners_ledger_entries_name_the_sha256_of_its_data_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = RunConfig(clients=3, rounds=1, epsilon=0.5, batch_size=15, out="/runs/a")
    reply = client_app.train(message(1, **SCHEMA), deployed(config, state))
    assert not reply.has_error(), error(reply)
    shown = CliRunner().invoke(cli, ["ledger", "show", "--state-dir", str(state), "--owner", "site-a",
                                     "--format", "json"])
    assert shown.exit_code == 0, shown.output
    data = hashlib.sha256((tmp_path / "site-a.csv").read_bytes()).hexdigest()
    assert [e["data"] for e in json.loads(shown.output)["entries"]] == [data]
    table = CliRunner().invoke(cli, ["ledger", "show", "--state-dir", str(state), "--owner", "site-a"])
    assert data[:12] in table.output
