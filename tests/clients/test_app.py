"""The ClientApp's handlers called in memory with real Flower Messages and Contexts."""

from __future__ import annotations

import time

import fedmodel.clients.app as client_app
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.privacy import epsilon_spent


def instruction(server_round: int, message_type: str = MessageType.TRAIN) -> Message:
    model = build_model("logreg", 64, 10, seed=42)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round})})
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=600.0, message_type=message_type)
    return make_message(metadata=meta, content=content)


def context(config: RunConfig, partition: int = 0) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition, "num-partitions": config.clients},
                   state=RecordDict(), run_config=config.to_mapping())


def test_privacy_state_accumulates_across_calls_in_the_context() -> None:
    config = RunConfig(clients=2, rounds=3)
    ctx = context(config)
    eps = []
    for server_round in (1, 2):
        reply = client_app.train(instruction(server_round), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        metrics = reply.content["metrics"]
        eps.append(float(metrics["epsilon"]))
        assert set(reply.content.keys()) == {"arrays", "metrics", "quality", "privacy-state"}
        assert dict(reply.content["privacy-state"]) == client_app.load_privacy(ctx).to_dict()  # what it spent
        quality = dict(reply.content["quality"])
        assert quality["rows"] == quality["clean-rows-out"] > 0 and quality["missing-cells"] == 0
        assert all(isinstance(v, int) for v in quality.values())  # counts only
    assert eps[1] > eps[0] > 0
    state = client_app.load_privacy(ctx)
    assert eps[1] == pytest.approx(epsilon_spent(state.history, config.delta))
    assert state.steps == 2 * state.plan.steps_per_round  # type: ignore[union-attr]


def test_a_fresh_context_would_restart_accounting_so_state_must_persist() -> None:
    """Guards the pitfall of a new PrivacyEngine per round: round 2 must not report round 1's epsilon."""
    config = RunConfig(clients=2, rounds=3)
    ctx = context(config)
    first = float(client_app.train(instruction(1), ctx).content["metrics"]["epsilon"])
    second_same = float(client_app.train(instruction(2), ctx).content["metrics"]["epsilon"])
    second_fresh = float(client_app.train(instruction(2), context(config)).content["metrics"]["epsilon"])
    assert second_fresh == pytest.approx(first)
    assert second_same > first


def test_failure_becomes_an_error_reply_naming_the_owner() -> None:
    config = RunConfig(clients=2, rounds=1, inject_failure_owners=(1,))
    reply = client_app.train(instruction(1), context(config, partition=1))
    assert reply.has_error()
    assert reply.error.reason.startswith("owner 1: injected failure")


def test_node_count_mismatch_is_refused() -> None:
    config = RunConfig(clients=3, rounds=1)
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config=config.to_mapping())
    reply = client_app.train(instruction(1), ctx)
    assert reply.has_error() and "expects 3" in reply.error.reason


def test_evaluate_reports_metrics_of_the_owner_shard() -> None:
    config = RunConfig(clients=2, rounds=1)
    reply = client_app.evaluate(instruction(1, MessageType.EVALUATE), context(config))
    metrics = reply.content["metrics"]
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0
    assert int(metrics["num-examples"]) > 600  # half of digits' 80% training split


# ---------------------------------------------------------------- deployment: the owner's own settings

def deployed_instruction(server_round: int, schema_features: int = 64) -> Message:
    msg = instruction(server_round)
    msg.content["config"] = ConfigRecord({"server-round": server_round, "schema-features": schema_features,
                                          "schema-labels": "\x1f".join(str(i) for i in range(10))})
    return msg


def shard_csv(path, rows: int = 60, features: int = 64):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(0)
    header = ",".join([f"f{i}" for i in range(features)] + ["digit"])
    lines = [header] + [",".join([f"{v:.3f}" for v in rng.random(features)] + [str(i % 10)]) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def deployed_context(config: RunConfig, data, budget: float = 1.0) -> Context:  # type: ignore[no-untyped-def]
    node = {"data-path": str(data), "label": "digit", "owner-name": "site-a", "budget-epsilon": budget,
            "delta": 1e-6, "device": "cpu", "state-dir": str(data.parent)}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config.to_mapping())


def test_deployed_owner_budget_caps_what_the_run_asks_for(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(clients=3, rounds=2, epsilon=8.0)  # the coordinator asks for 8
    ctx = deployed_context(config, shard_csv(tmp_path / "site-a.csv"), budget=1.0)
    reply = client_app.train(deployed_instruction(1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert float(metrics["budget-epsilon"]) == 1.0 and float(metrics["delta"]) == 1e-6
    assert 0 < float(metrics["epsilon"]) <= 1.0
    assert reply.content.config_records["owner-info"]["name"] == "site-a"
    assert "owner" not in metrics
    second = client_app.train(deployed_instruction(2), ctx).content["metrics"]
    assert float(metrics["epsilon"]) < float(second["epsilon"]) <= 1.0


def test_deployed_shard_with_wrong_columns_replies_an_error_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = shard_csv(tmp_path / "bad.csv", features=5)
    reply = client_app.train(deployed_instruction(1), deployed_context(RunConfig(clients=3, rounds=1), data))
    assert reply.has_error()
    assert reply.error.reason.startswith("owner site-a:")
    assert f"{data}: 5 feature columns" in reply.error.reason and "the run schema expects 64" in reply.error.reason


def test_deployed_node_refuses_a_run_without_dp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = deployed_context(RunConfig(clients=3, rounds=1, dp=False), shard_csv(tmp_path / "s.csv"))
    reply = client_app.train(deployed_instruction(1), ctx)
    assert reply.has_error() and "trains only with DP" in reply.error.reason


def feature_sums_query(config: RunConfig) -> Message:
    import numpy as np

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


def test_feature_sums_are_charged_before_release_and_count_in_the_training_epsilon() -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    config = RunConfig(clients=2, rounds=2, scaling="zscore")
    ctx = context(config)
    reply = client_app.query(feature_sums_query(config), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert len(list(metrics["sums"])) == 3 * 64
    state = client_app.load_privacy(ctx)
    assert state.other == [(5.0, 1.0, 1)] and state.history == []
    assert float(metrics["epsilon-stats"]) == pytest.approx(epsilon_spent([(5.0, 1.0, 1)], config.delta))
    train = client_app.train(instruction(1), ctx)
    assert not train.has_error(), train.error.reason if train.has_error() else ""
    state = client_app.load_privacy(ctx)
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=s, steps=n, orders=orders) for s, q, n in state.everything)
    oracle, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=config.delta)
    assert float(train.content["metrics"]["epsilon"]) == pytest.approx(float(oracle), rel=1e-9)


def test_feature_sums_past_the_budget_are_refused_and_nothing_is_charged() -> None:
    config = RunConfig(clients=2, rounds=2, epsilon=0.3, scaling="zscore")
    ctx = context(config)
    reply = client_app.query(feature_sums_query(config), ctx)
    assert reply.has_error() and "budget" in reply.error.reason and reply.error.reason.startswith("owner 0:")
    assert client_app.load_privacy(ctx).other == []


def test_a_bundled_data_set_with_named_classes_trains_and_is_evaluated() -> None:
    """breast-cancer's classes are names in the data, codes in the run's schema: both sides must agree."""
    config = RunConfig(dataset="breast-cancer", clients=2, rounds=1)
    model = build_model("logreg", 30, 2, seed=42)
    from fedmodel.data import federated_split

    schema = federated_split(config).schema.to_config()
    for message_type in (MessageType.TRAIN, MessageType.EVALUATE):
        msg = instruction(1, message_type)
        msg.content["arrays"] = ArrayRecord(model.state_dict())
        msg.content["config"] = ConfigRecord({"server-round": 1, **schema})
        handler = client_app.train if message_type == MessageType.TRAIN else client_app.evaluate
        reply = handler(msg, context(config))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        assert float(reply.content["metrics"]["num-examples"]) > 100


# ---------------------------------------------------------------- a hostile coordinator's run config (issue 20)

def site_a_id() -> int:
    import zlib

    return zlib.crc32(b"site-a")  # the owner id a deployed node's faults and failures are matched against


@pytest.mark.parametrize(("key", "value"), [
    ("inject-faults", f"{site_a_id()}:no-noise"),  # trains with sigma 0 while reporting the planned sigma
    ("inject-failure-owners", str(site_a_id())),
    ("inject-faults", f"{site_a_id()}:hang:3600"),
    ("audit", True),
    ("ray-address", "10.0.0.1:6379"),
])
def test_a_deployed_node_refuses_testing_aids_before_reading_any_data(tmp_path, key, value) -> None:  # type: ignore[no-untyped-def]
    config = RunConfig(clients=site_a_id() + 1, rounds=1)  # clients large enough for the owner id to validate
    ctx = deployed_context(config, tmp_path / "absent.csv")  # reading any data would fail with "file not found"
    ctx.run_config[key] = value
    reply = client_app.train(deployed_instruction(1), ctx)
    assert reply.has_error()
    assert reply.error.reason.startswith("owner site-a: refused by the owner's privacy policy (run-config)")
    assert f"{key} = " in reply.error.reason and "not found" not in reply.error.reason
    for handler, message in ((client_app.evaluate, deployed_instruction(1)), (client_app.query, feature_sums_query(
            RunConfig(clients=3)))):
        assert "(run-config)" in handler(message, ctx).error.reason


def test_a_deployed_node_refuses_an_unknown_run_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = deployed_context(RunConfig(clients=3, rounds=1), shard_csv(tmp_path / "s.csv"))
    ctx.run_config["exact-evaluation"] = True
    reply = client_app.train(deployed_instruction(1), ctx)
    assert "(run-config): exact-evaluation: not on this node's allow-list" in reply.error.reason
    from fedmodel.security.audit_log import read_entries

    refusals = [e.fields for e in read_entries(tmp_path / "audit.log")[0] if e.event == "refuse"]
    assert [f["rule"] for f in refusals] == ["run-config"]  # the owner's audit log has it too


def test_a_deployed_node_trains_at_its_own_delta_whatever_the_run_asks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedmodel.privacy.owner_ledger import open_ledger

    data = shard_csv(tmp_path / "site-a.csv")
    ctx = deployed_context(RunConfig(clients=3, rounds=2, delta=1e-12), data)  # the owner's delta is 1e-6
    reply = client_app.train(deployed_instruction(1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert float(reply.content["metrics"]["delta"]) == 1e-6  # the reply says which delta it trained at
    assert open_ledger(str(tmp_path)).owner_delta("site-a") == 1e-6  # the ledger's total is not re-priced


def test_a_deployed_node_refuses_cleaning_with_its_own_quartiles_before_reading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = deployed_context(RunConfig(clients=3, rounds=1, outliers="clip"), tmp_path / "absent.csv")
    reply = client_app.train(deployed_instruction(1), ctx)
    assert reply.error.reason.startswith("owner site-a: refused by the owner's privacy policy (local-statistics): "
                                         "outliers = 'clip'")
    ctx = deployed_context(RunConfig(clients=3, rounds=1, missing="mean", scaling="zscore"), tmp_path / "absent.csv")
    reply = client_app.query(feature_sums_query(RunConfig(clients=3)), ctx)  # the sums would hold local means
    assert "(local-statistics): missing = 'mean'" in reply.error.reason


def test_local_statistics_allowed_by_the_owner_show_in_the_reply_and_the_audit_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedmodel.security.audit_log import read_entries

    ctx = deployed_context(RunConfig(clients=3, rounds=1, outliers="clip", scaling="zscore", scaling_stats="local"),
                           shard_csv(tmp_path / "site-a.csv"))
    ctx.node_config["allow-local-statistics"] = True
    reply = client_app.train(deployed_instruction(1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert float(reply.content["metrics"]["local-statistics"]) == 1.0
    client_app.train(deployed_instruction(2), ctx)  # recorded once per run
    entries = [e for e in read_entries(tmp_path / "audit.log")[0] if e.event == "local-statistics"]
    assert len(entries) == 1
    assert [o.split(" = ")[0] for o in entries[0].fields["options"]] == ["outliers", "scaling"]  # type: ignore[union-attr]


def test_a_deployed_train_reply_without_local_statistics_says_nothing_of_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = deployed_context(RunConfig(clients=3, rounds=1, missing="drop", duplicates="drop"),
                           shard_csv(tmp_path / "site-a.csv"))
    reply = client_app.train(deployed_instruction(1), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert "local-statistics" not in reply.content["metrics"]


def test_a_label_leaking_schema_gets_row_and_column_but_never_the_value(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = shard_csv(tmp_path / "site-a.csv")
    secret = "malignant-grade-4"
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + f",{secret}"  # row 6 as a spreadsheet shows it
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for config in (RunConfig(clients=3, rounds=1, missing="drop"), RunConfig(clients=3, rounds=1)):
        reply = client_app.train(deployed_instruction(1), deployed_context(config, data))  # schema: labels 0-9
        assert reply.has_error() and reply.error.reason.startswith("owner site-a:")
        assert "row 6" in reply.error.reason and "label" in reply.error.reason
        assert secret not in reply.error.reason


def test_a_deployed_node_sends_only_the_type_of_an_unexpected_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    msg = deployed_instruction(1)
    msg.content["arrays"] = ArrayRecord(build_model("logreg", 30, 10, seed=42).state_dict())  # wrong shapes
    reply = client_app.evaluate(msg, deployed_context(RunConfig(clients=3, rounds=1), shard_csv(tmp_path / "s.csv")))
    assert reply.error.reason.startswith("owner site-a: RuntimeError: unexpected error (the details")
    assert "size mismatch" not in reply.error.reason  # a library's text may quote anything; it stays in the log
