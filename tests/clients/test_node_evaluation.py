"""No free oracle: what a deployed node's evaluate and train replies release, through the real ClientApp handlers.

The attack: the coordinator sends a threshold model (class 1 iff ``x_j > t``) to be evaluated; with exact
metrics, ``accuracy x num-examples`` is the exact number of the owner's rows matching the rule
``label == [x_j > t]``, for any ``j`` and ``t`` it likes, charged to nothing. (The node at 3f11166 had no
``evaluation`` setting and answered exactly: the default-node tests below fail there.)
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import dp_accounting
import fedmodel.clients.app as client_app
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import RunConfig
from fedmodel.models import build_model
from fedmodel.privacy.ledger import PrivacyLedger, ledger_path
from fedmodel.security.audit_log import read_entries

FEATURES, ROWS = 4, 400
SCHEMA = {"schema-features": FEATURES, "schema-labels": "0\x1f1"}


def shard(path: Path, rows: int = ROWS, duplicates: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A binary-label CSV; returns it with its features and labels (the truth the attack is checked against)."""
    rng = np.random.default_rng(1)
    x = np.round(rng.random((rows, FEATURES)), 3)
    y = rng.integers(0, 2, rows)
    lines = [",".join([f"f{i}" for i in range(FEATURES)] + ["y"])]
    lines += [",".join([f"{v:.3f}" for v in row] + [str(label)]) for row, label in zip(x, y, strict=True)]
    lines += lines[1:1 + duplicates]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, x, y


def node(data: Path, **settings: object) -> Context:
    config = RunConfig(clients=3, rounds=2, epsilon=8.0, out="/runs/x")  # capped at the node's budget
    node_config = {"data-path": str(data), "label": "y", "owner-name": "site-a", "budget-epsilon": 1.0,
                   "delta": 1e-6, "device": "cpu", "state-dir": str(data.parent), **settings}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),  # type: ignore[arg-type]
                   run_config=config.to_mapping())


def message(weights: dict[str, torch.Tensor], message_type: str = MessageType.EVALUATE,
            server_round: int = 1) -> Message:
    content = RecordDict({"arrays": ArrayRecord(weights),
                          "config": ConfigRecord({"server-round": server_round, **SCHEMA})})
    meta = Metadata(run_id=1, message_id=f"m{time.monotonic_ns()}", src_node_id=0, dst_node_id=7,
                    reply_to_message_id="", group_id=str(server_round), created_at=time.time(), ttl=600.0,
                    message_type=message_type)
    return make_message(metadata=meta, content=content)


def threshold_model(j: int, t: float) -> dict[str, torch.Tensor]:
    """One logistic unit with weight 1 on feature j and bias -t: predicts class 1 iff x_j > t."""
    weight = torch.zeros(2, FEATURES)
    weight[1, j] = 1.0
    return {"0.weight": weight, "0.bias": torch.tensor([0.0, -t])}


def oracle(reply: Message) -> int:
    """What the coordinator reads back: accuracy x num-examples."""
    assert not reply.has_error(), reply.error.reason
    m = reply.content["metrics"]
    return round(float(m["accuracy"]) * float(m["num-examples"]))


def truth(x: np.ndarray, y: np.ndarray, j: int, t: float) -> int:
    return int(np.sum((x[:, j] > t) == (y == 1)))


def spent(state: Path) -> tuple[float, int]:
    """The owner's total epsilon in its ledger and its number of entries."""
    with PrivacyLedger(ledger_path(state), create=False) as ledger:
        return ledger.spent("site-a"), len(ledger.entries("site-a"))


QUERIES = [(0, 0.25), (1, 0.5), (2, 0.75), (3, 0.4), (0, 0.6)]


def test_exact_evaluation_is_a_free_counting_oracle(tmp_path: Path) -> None:
    """--evaluation exact (the old behaviour): every threshold query returns the exact count, charged nothing."""
    data, x, y = shard(tmp_path / "site-a.csv")
    ctx = node(data, evaluation="exact")
    for j, t in QUERIES:
        assert oracle(client_app.evaluate(message(threshold_model(j, t)), ctx)) == truth(x, y, j, t)
    reply = client_app.evaluate(message(threshold_model(0, 0.5)), ctx)
    assert float(reply.content["metrics"]["evaluation-dp"]) == 0.0
    assert not ledger_path(tmp_path).exists() or spent(tmp_path)[1] == 0


def test_the_default_node_answers_only_noisy_counts_and_charges_each_one(tmp_path: Path) -> None:
    data, x, y = shard(tmp_path / "site-a.csv")
    ctx = node(data, **{"budget-epsilon": 3.0})
    errors, ledger, replies = [], [], []
    for j, t in QUERIES:
        replies.append(client_app.evaluate(message(threshold_model(j, t)), ctx))
        errors.append(oracle(replies[-1]) - truth(x, y, j, t))
        ledger.append(spent(tmp_path) if ledger_path(tmp_path).exists() else (0.0, 0))
    # the noise on the count has std 10 * sqrt(3) = 17.3: five answers all within 2 of the truth has
    # probability ~1e-8; the exact node (and the node at 3f11166) is off by 0 every time
    assert np.mean(np.abs(errors)) > 2, errors
    totals = [total for total, _ in ledger]
    assert [entries for _, entries in ledger] == [1, 2, 3, 4, 5]  # one ledger entry per release
    assert all(b > a for a, b in zip([0.0] + totals, totals, strict=False))  # every release raised the owner's epsilon
    for reply in replies:
        m = reply.content["metrics"]
        assert float(m["evaluation-dp"]) == 1.0 and float(m["evaluation-epsilon"]) > 0
        assert all(math.isnan(float(m[k])) for k in ("precision", "recall", "f1"))  # not released
        assert float(m["num-examples"]) >= 1 and float(m["num-examples"]).is_integer()


def test_the_ledger_charges_what_an_independent_accountant_computes(tmp_path: Path) -> None:
    """k evaluations at noise multiplier sigma: the ledger's total against dp-accounting's RDP and PLD accountants."""
    data, _, _ = shard(tmp_path / "site-a.csv")
    sigma = 12.0
    ctx = node(data, **{"budget-epsilon": 3.0, "evaluation-noise": sigma})
    for k in range(1, 4):
        assert not client_app.evaluate(message(threshold_model(0, 0.5)), ctx).has_error()
        with PrivacyLedger(ledger_path(tmp_path), create=False) as ledger:
            entries = ledger.entries("site-a")
            total = ledger.spent("site-a")
        assert [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries] == [(sigma, 1.0, 1)] * k
        rdp = dp_accounting.rdp.RdpAccountant()
        rdp.compose(dp_accounting.GaussianDpEvent(sigma), k)
        pld = dp_accounting.pld.PLDAccountant()
        pld.compose(dp_accounting.GaussianDpEvent(sigma), k)
        assert total == pytest.approx(rdp.get_epsilon(1e-6), rel=2e-3)  # the node's delta
        assert pld.get_epsilon(1e-6) <= total  # RDP is an upper bound on the tight (PLD) epsilon


def test_repeated_queries_hit_the_budget_and_are_refused_with_nothing_released(tmp_path: Path) -> None:
    data, _, _ = shard(tmp_path / "site-a.csv")
    ctx = node(data)  # budget 1.0; each release costs 0.43 alone at delta 1e-6
    replies = [client_app.evaluate(message(threshold_model(0, 0.5)), ctx) for _ in range(8)]
    answered = [r for r in replies if not r.has_error()]
    refused = [r for r in replies if r.has_error()]
    assert 1 <= len(answered) < 8 and refused
    assert all(not r.has_error() for r in replies[:len(answered)])  # refused from then on, never answered again
    for r in refused:
        assert "above the budget" in r.error.reason and "nothing was evaluated or released" in r.error.reason
        assert not r.has_content()
    total, entries = spent(tmp_path)
    assert entries == len(answered) and total <= 1.0


def test_evaluation_off_is_refused_before_the_data_is_read(tmp_path: Path) -> None:
    data = tmp_path / "site-a.csv"
    data.write_text("f0,f1,f2,f3,y\n0.1,\"unterminated\n\x00\x00,,\n", encoding="utf-8")  # would not parse
    broken = client_app.evaluate(message(threshold_model(0, 0.5)), node(data, evaluation="exact"))
    assert broken.has_error() and "refused by the owner's privacy policy" not in broken.error.reason
    reply = client_app.evaluate(message(threshold_model(0, 0.5)), node(data, evaluation="off"))
    assert reply.has_error()
    assert reply.error.reason.startswith("owner site-a: refused by the owner's privacy policy (evaluation): ")
    entries, _ = read_entries(tmp_path / "audit.log")
    assert (entries[-1].event, entries[-1].fields["rule"]) == ("refuse", "evaluation")


def test_a_run_that_evaluates_every_round_stays_within_the_plan_and_extra_queries_are_refused(tmp_path: Path) -> None:
    """DP-SGD leaves room for one DP evaluation per round; an evaluation beyond that would eat training's share."""
    data, _, _ = shard(tmp_path / "site-a.csv", rows=120)
    ctx = node(data, **{"budget-epsilon": 2.0})
    start = build_model("logreg", FEATURES, 2, seed=0).state_dict()
    for server_round in (1, 2):
        trained = client_app.train(message(start, MessageType.TRAIN, server_round), ctx)
        assert not trained.has_error(), trained.error.reason
        evaluated = client_app.evaluate(message(trained.content["arrays"].to_torch_state_dict(),
                                                server_round=server_round), ctx)
        assert not evaluated.has_error(), evaluated.error.reason
    total, entries = spent(tmp_path)
    assert entries == 4 and total <= 2.0
    extra = client_app.evaluate(message(start, server_round=2), ctx)
    assert extra.has_error() and "above the budget" in extra.error.reason
    assert spent(tmp_path) == (total, entries)


def test_train_replies_withhold_the_loss_and_coarsen_the_counts_by_default(tmp_path: Path) -> None:
    data, _, _ = shard(tmp_path / "site-a.csv", rows=63, duplicates=2)
    start = build_model("logreg", FEATURES, 2, seed=0).state_dict()
    coarse = client_app.train(message(start, MessageType.TRAIN), node(data, **{"state-dir": str(tmp_path / "a")}))
    exact = client_app.train(message(start, MessageType.TRAIN),
                             node(data, **{"state-dir": str(tmp_path / "b"), "exact-replies": True}))
    assert not coarse.has_error() and not exact.has_error()
    m, q = coarse.content["metrics"], dict(coarse.content["quality"])
    assert math.isnan(float(m["train-loss"])) and float(m["exact-replies"]) == 0.0
    assert set(m.keys()) == set(exact.content["metrics"].keys())  # one layout: the coordinator aggregates both
    exact_q = dict(exact.content["quality"])
    assert exact_q["rows"] == 65 and exact_q["duplicate-rows"] == 2  # what --exact-replies gives away
    assert q["rows"] == 70 and q["duplicate-rows"] == 0 and set(q) == set(exact_q)
    assert all(v % 10 == 0 for v in q.values())
    assert math.isfinite(float(exact.content["metrics"]["train-loss"]))
    assert float(exact.content["metrics"]["exact-replies"]) == 1.0


def test_a_simulated_owner_still_releases_exact_metrics_in_the_old_layout() -> None:
    config = RunConfig(clients=2, rounds=1)
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config=config.to_mapping())
    weights = build_model("logreg", 64, 10, seed=42).state_dict()
    reply = client_app.evaluate(message(weights), ctx)
    assert set(reply.content["metrics"].keys()) == {"num-examples", "loss", "accuracy", "precision", "recall", "f1",
                                                     "owner"}
    trained = client_app.train(message(weights, MessageType.TRAIN), ctx)
    assert "exact-replies" not in trained.content["metrics"]
    assert math.isfinite(float(trained.content["metrics"]["train-loss"]))


@pytest.mark.parametrize("mode", ["dp", "off"])
def test_a_language_model_is_evaluated_only_where_the_owner_allows_exact_evaluation(tmp_path: Path,
                                                                                    mode: str) -> None:
    """Language models have no DP release: a default node refuses their evaluation before touching anything."""
    ctx = node(tmp_path / "notes.csv", evaluation=mode)  # the file does not even exist
    ctx.run_config["task"] = "classification"
    reply = client_app.evaluate(message(threshold_model(0, 0.5)), ctx)
    assert reply.has_error()
    assert reply.error.reason.startswith("owner site-a: refused by the owner's privacy policy (evaluation): ")
