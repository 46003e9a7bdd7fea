"""A hostile coordinator against real ``fedmodel node start`` processes over TLS (issue 20's red-team suite).

Each test is one attack from the threat model; it asserts the attack is BLOCKED and says how (the refusal's
rule, the audit-log entry, the report field). The expected refusal of each defence is checked in ONE helper per
attack (``blocked_*`` below), so a change in the wording of a defence is a one-line change here.
Run: ``pytest -m adversarial tests/adversarial`` (about 8 minutes on 2 cores). tests/adversarial/README.md says
what each attack achieved against the code before the defences (3f11166).

The tests share one federation (conftest.py) and run in file order: the local-attacker tests at the end stop
or tamper with nodes the earlier ones use.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.adversarial.conftest import (  # the harness (pytest imports it first, under this name)
    APPS,
    FEATURES,
    LABELS,
    RUN_EPSILON,
    SPARE,
    Federation,
    HostileResult,
    fedmodel,
    logreg,
    message,
    message_config,
    read_csv,
    stop,
)

pytestmark = [pytest.mark.adversarial, pytest.mark.timeout(900)]
FEDMODEL_APP = APPS / "fedmodel_client"  # the FAB names fedmodel's own ClientApp: attacks go through the node's code
RUN_CONFIG_RULE = "run-config"


def refusal_text(rule: str) -> str:
    """The text of a PolicyViolation of ``rule`` (fedmodel.errors.PolicyViolation)."""
    return f"refused by the owner's privacy policy ({rule})"


def error_of(result: HostileResult, id_: str) -> str:
    """The error reason of a reply; fails, quoting what the node sent instead, if the node answered normally."""
    reply = result.reply(id_)
    if reply["error"] is None:
        metrics = {k: v for m in reply.get("metrics", {}).values() for k, v in m.items()}
        raise AssertionError(f"{id_}: NOT refused: the node answered with arrays {sorted(reply.get('arrays', {}))} "
                             f"and metrics {metrics}")
    return str(reply["error"])


def update_of(reply: dict[str, Any]) -> np.ndarray:
    assert reply["error"] is None, reply["error"]
    arrays = reply["arrays"]["arrays"]
    return np.concatenate([np.ravel(arrays[k]) for k in sorted(arrays)])


def metrics_of(reply: dict[str, Any]) -> dict[str, float]:
    assert reply["error"] is None, reply["error"]
    return {k: v for m in reply["metrics"].values() for k, v in m.items()}


def ledger_epsilon(fed: Federation, site: str) -> float:
    owners = fed.ledger(site)["owners"]
    return float(sum(o["epsilon"] for o in owners))


def owner_id(site: str) -> int:
    """The owner number a deployed node answers to in ``inject-faults`` / ``inject-failure-owners`` (3f11166:
    ``crc32`` of its name, which travels in every reply); ``clients`` must exceed it for the run config to parse."""
    return zlib.crc32(site.encode())


HUGE_CLIENTS = 2**32  # lets a run config name any crc32 owner number


# ================================================================== a run with fedmodel's own config: 1, 4
def threshold_model(x: np.ndarray, feature: int) -> tuple[dict[str, Any], float]:
    """A logreg model predicting class 1 iff ``x[:, feature] > t``, with ``t`` halfway between two middle values."""
    values = np.unique(x[:, feature])
    k = len(values) // 2
    t = float((values[k - 1] + values[k]) / 2)
    weight = np.zeros((2, FEATURES), np.float32)
    weight[1, feature] = 1000.0
    bias = np.array([0.0, -1000.0 * t], np.float32)
    return logreg(weight, bias), t


@pytest.fixture(scope="module")
def plain_run(federation: Federation) -> tuple[HostileResult, dict[str, Any]]:
    """One hostile run with fedmodel's default run config (two rounds): a replayed train (site-a) and two
    threshold-model evaluations (site-b), in two phases."""
    ids = federation.node_ids
    x, y = read_csv(federation.shards["site-b"])
    oracle, t = threshold_model(x, feature=0)
    truth = int(np.sum((x[:, 0] > t).astype(np.int64) == y))
    same = {"arrays": logreg(), "config": message_config(server_round=1)}
    # planned for two rounds, so the replayed round 1 fits the run's budget: it must train with fresh noise
    result = federation.run_hostile(FEDMODEL_APP, {"rounds": 2}, [
        [message("replay-1", ids["site-a"], "train", **same),
         message("oracle-1", ids["site-b"], "evaluate", arrays=oracle)],
        [message("replay-2", ids["site-a"], "train", **same),
         message("oracle-2", ids["site-b"], "evaluate", arrays=oracle)],
    ])
    return result, {"truth": truth, "rows": len(y), "threshold": t}


# ------------------------------------------------------------------ 1. noise prediction / replay
def blocked_replay(fed: Federation, result: HostileResult, first: str, second: str, site: str) -> None:
    """Two identical train messages: the updates differ (fresh noise), and the ledger charged both releases."""
    one, two = update_of(result.reply(first)), update_of(result.reply(second))
    assert not np.array_equal(one, two), (
        f"{site} sent two bit-identical updates for the same round: its DP noise is predictable and a replay "
        f"gets the same noise (max |diff| {np.max(np.abs(one - two)):g})")
    entries = fed.ledger_entries(site, result.run_id)
    charged = [e for e in entries if e["status"] == "committed"]
    assert len(charged) >= 2, f"{site}'s ledger charged {len(charged)} release(s) for two trainings: {entries}"


def test_1_replayed_round_gets_fresh_noise_and_is_charged_twice(
        federation: Federation, plain_run: tuple[HostileResult, dict[str, Any]]) -> None:
    blocked_replay(federation, plain_run[0], "replay-1", "replay-2", "site-a")


# ------------------------------------------------------------------ 4. threshold-model evaluation oracle
def blocked_oracle(fed: Federation, result: HostileResult, ids: list[str], site: str, truth: int, rows: int) -> None:
    """Evaluations are noised (the count read back from accuracy is not the true count) and charged per request."""
    recovered = []
    for id_ in ids:
        reply = result.reply(id_)
        if reply["error"] is not None:  # refused: no oracle at all
            continue
        m = metrics_of(reply)
        if "accuracy" in m:
            recovered.append(float(m["accuracy"]) * float(m.get("num-examples", rows)))
    exact = [r for r in recovered if abs(r - truth) < 1e-6]
    assert len(exact) < len(recovered) or not recovered, (
        f"{site} answered {len(recovered)} threshold-model evaluations exactly: accuracy x rows = {recovered}, the "
        f"true number of rows with (x0 > t) == label is {truth}: a free, exact counting oracle")
    charged = fed.ledger_entries(site, result.run_id)
    assert len(charged) >= len(recovered), (
        f"{site} released {len(recovered)} evaluations of its rows and its ledger charged {len(charged)}: {charged}")


def test_4_threshold_model_evaluation_is_noised_and_charged(
        federation: Federation, plain_run: tuple[HostileResult, dict[str, Any]]) -> None:
    result, facts = plain_run
    blocked_oracle(federation, result, ["oracle-1", "oracle-2"], "site-b", facts["truth"], facts["rows"])


def test_4b_evaluation_refused_where_the_owner_turned_it_off(federation: Federation) -> None:
    helped = fedmodel("node", "start", "--help")
    if "--evaluation" not in helped.stdout:
        pytest.skip("fedmodel node start has no --evaluation option in this version")
    label = "evaluation-off"
    proc = federation.start_node(label, key=SPARE, extra=("--evaluation", "off"))
    try:
        assert federation.wait_online(SPARE, proc), (federation.root / f"{label}.log").read_text()
        result = federation.run_hostile(FEDMODEL_APP, {}, [
            [message("evaluate", federation.node_ids[SPARE], "evaluate")]])
    finally:
        stop([proc])
    assert refusal_text("evaluation") in error_of(result, "evaluate")


# ================================================================== run-config attacks: 2, 5, 10 (runs side by side)
RUN_CONFIG_ATTACKS: dict[str, tuple[str, str, dict[str, Any]]] = {  # name: (site, key named, run-config overrides)
    "no-noise": ("site-a", "inject-faults",
                 {"clients": HUGE_CLIENTS, "inject-faults": f"{owner_id('site-a')}:no-noise"}),
    "failure-owners": ("site-b", "inject-failure-owners",
                       {"clients": HUGE_CLIENTS, "inject-failure-owners": str(owner_id("site-b"))}),
    "hang": ("site-c", "inject-faults", {"clients": HUGE_CLIENTS, "inject-faults": f"{owner_id('site-c')}:hang:3"}),
    "canaries": ("site-d", "audit", {"audit": True}),
    "local-zscore": ("site-a", "scaling-stats", {"scaling": "zscore", "scaling-stats": "local"}),
    "local-quartiles": ("site-b", "outliers", {"outliers": "clip"}),
    "local-median": ("site-c", "missing", {"missing": "median"}),
    "delta": ("site-d", "delta", {"delta": 1e-12}),
    # missing = drop reads the file tolerantly (3f11166: the label check then quotes the value it cannot place)
    "label-leak": ("site-c", "schema-labels", {"missing": "drop"}),
}
LEAKY_SCHEMA = message_config(server_round=1, labels=(LABELS[0],))  # leaves out "malignant", which site-c holds


@pytest.fixture(scope="module")
def run_config_attacks(federation: Federation) -> dict[str, HostileResult]:
    """Every run-config attack as a hostile run of its own (one train message to one node), all at once.

    ``label-leak`` also declares a schema whose labels leave out one that site-c's file holds.
    """
    runs = {name: (FEDMODEL_APP, overrides, [[message(name, federation.node_ids[site], "train",
                                                      config=LEAKY_SCHEMA if name == "label-leak" else None)]])
            for name, (site, _, overrides) in RUN_CONFIG_ATTACKS.items()}
    return federation.run_hostile_many(runs)


# ------------------------------------------------------------------ 2. remote fault injection
def blocked_run_config(fed: Federation, result: HostileResult, name: str, site: str, key: str | None,
                       rule: str = RUN_CONFIG_RULE) -> None:
    """Refused with a PolicyViolation (naming ``key`` if given), in the node's audit log, nothing trained or charged."""
    reason = error_of(result, name)
    assert refusal_text(rule) in reason, f"{name}: refused, but not by rule {rule!r}: {reason!r}"
    assert key is None or key in reason, f"{name}: the refusal does not name the run-config key {key!r}: {reason!r}"
    events = fed.audit_of_run(site, result.run_id)
    assert any(e["event"] == "refuse" and e["fields"].get("rule") == rule for e in events), (
        f"{name}: no refusal ({rule}) in {site}'s audit log: {[e['event'] for e in events]}")
    assert not {"reserve", "commit"} & {e["event"] for e in events}, f"{name}: {site} spent privacy before refusing"
    assert fed.ledger_entries(site, result.run_id) == []


@pytest.mark.parametrize("name", ["no-noise", "failure-owners", "hang", "canaries"])
def test_2_testing_aids_in_the_run_config_are_refused(
        federation: Federation, run_config_attacks: dict[str, HostileResult], name: str) -> None:
    site, key, _ = RUN_CONFIG_ATTACKS[name]
    blocked_run_config(federation, run_config_attacks[name], name, site, key)


# ------------------------------------------------------------------ 5. local-statistics preprocessing
LOCAL_STATISTICS_RULE = "local-statistics"


@pytest.mark.parametrize("name", ["local-zscore", "local-quartiles", "local-median"])
def test_5_preprocessing_with_the_owners_own_statistics_is_refused(
        federation: Federation, run_config_attacks: dict[str, HostileResult], name: str) -> None:
    site, _, _ = RUN_CONFIG_ATTACKS[name]
    blocked_run_config(federation, run_config_attacks[name], name, site, None, rule=LOCAL_STATISTICS_RULE)


# ------------------------------------------------------------------ 10. pushed-down delta
def blocked_delta(fed: Federation, result: HostileResult, name: str, site: str, node_delta: float) -> None:
    """Either refused naming delta, or trained at the owner's delta: the ledger's delta, and epsilon no higher."""
    reply = result.reply(name)
    if reply["error"] is not None:
        assert "delta" in reply["error"], reply["error"]
        return
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    entries = fed.ledger_entries(site, result.run_id)
    assert entries, f"{site} trained and its ledger holds no entry for the run"
    assert all(e["delta"] == node_delta for e in entries), (
        f"the coordinator pushed {site}'s delta down: its ledger records delta {[e['delta'] for e in entries]}, the "
        f"owner set {node_delta:g}")
    orders = RDPAccountant.DEFAULT_ALPHAS
    allowed = sum(get_privacy_spent(orders=orders, delta=node_delta, rdp=compute_rdp(
        q=e["sample_rate"], noise_multiplier=e["noise_multiplier"], steps=e["steps"], orders=orders))[0]
        for e in entries)
    charged = metrics_of(reply).get("epsilon", 0.0)
    assert charged <= allowed * (1 + 1e-9), f"{site} was charged epsilon {charged}, its own delta gives {allowed}"


def test_10_pushed_down_delta_does_not_reach_the_ledger(
        federation: Federation, run_config_attacks: dict[str, HostileResult]) -> None:
    blocked_delta(federation, run_config_attacks["delta"], "delta", "site-d", node_delta=1e-5)


# ------------------------------------------------------------------ 11. label-leaking schema
def blocked_label_leak(reason: str, column: str, hidden: str) -> None:
    """The refusal names where (row and column) but never the value of the label it could not place."""
    assert hidden not in reason, f"the error reply quotes the label value {hidden!r} with its row: {reason!r}"
    assert re.search(r"\brow\b", reason) and column in reason, f"the refusal does not name row and column: {reason!r}"


def test_11_schema_leaving_out_a_label_gets_no_label_value_back(
        run_config_attacks: dict[str, HostileResult]) -> None:
    blocked_label_leak(error_of(run_config_attacks["label-leak"], "label-leak"), column="diagnosis",
                       hidden=LABELS[1])


# ================================================================== 3. a FAB that brings its own ClientApp
INSTALLED_CODE_RULE = "installed-code"


def blocked_foreign_code(fed: Federation, result: HostileResult, name: str, site: str) -> None:
    """Refused (rule installed-code) and not one byte of the owner's file in anything that came back."""
    head = fed.shards[site].read_text(encoding="utf-8").splitlines()[1][:24]  # a data row's first bytes
    sent_back = json.dumps(result.replies)
    assert head not in sent_back and "f0,f1,f2" not in sent_back, (
        f"{name}: the coordinator's own ClientApp ran at {site} and sent its data file back: {sent_back[:300]}")
    assert INSTALLED_CODE_RULE in error_of(result, name)


@pytest.fixture(scope="module")
def foreign_code(federation: Federation) -> dict[str, HostileResult]:
    ids = federation.node_ids
    return federation.run_hostile_many({
        "own-clientapp": (APPS / "own_client", {}, [[message("own-clientapp", ids["site-c"], "train")]]),
        "shadowed-clients": (APPS / "shadow", {}, [[message("shadowed-clients", ids["site-d"], "train")]]),
    })


def test_3_fab_naming_its_own_clientapp_is_refused(
        federation: Federation, foreign_code: dict[str, HostileResult]) -> None:
    blocked_foreign_code(federation, foreign_code["own-clientapp"], "own-clientapp", "site-c")


def test_3b_fab_shadowing_fedmodels_clients_package_is_refused(
        federation: Federation, foreign_code: dict[str, HostileResult]) -> None:
    blocked_foreign_code(federation, foreign_code["shadowed-clients"], "shadowed-clients", "site-d")


# ================================================================== 6. SecAgg+ replay with one owner dropped
SECAGG_REPLAY_RULE = "secure-aggregation-replay"


def blocked_secagg_replay(result: HostileResult, replay: str) -> None:
    """The replayed round gives the coordinator no second sum; the nodes refuse the second masked attempt."""
    first, second = result.secagg["first"], result.secagg[replay]
    assert first["aggregate"] is not None, f"the honest SecAgg+ round itself failed: {first}"
    assert second["aggregate"] is None, (
        "the same (run, round) was masked and summed twice, once without site-d: the difference of the two sums "
        f"is site-d's update (stages {second['stages']}, errors {second['errors']})")
    reasons = [r for errors in second["errors"].values() for r in errors]
    assert any(refusal_text(SECAGG_REPLAY_RULE) in r or SECAGG_REPLAY_RULE in r for r in reasons), reasons


def test_6_secagg_round_replayed_without_one_owner_is_refused(federation: Federation) -> None:
    ids = federation.node_ids
    everyone = [ids[s] for s in ("site-a", "site-b", "site-c", "site-d")]
    phase = {"arrays": logreg(), "config": message_config(server_round=1), "threshold": 2}
    result = federation.run_hostile(FEDMODEL_APP, {"secure-aggregation": True, "clients": 4}, [
        {"kind": "secagg", "id": "first", "nodes": everyone, **phase},
        {"kind": "secagg", "id": "without-site-d", "nodes": everyone[:3], **phase},
    ])
    blocked_secagg_replay(result, "without-site-d")


# ================================================================== 7. impersonation of another site
def blocked_impersonation(report: dict[str, Any], registry: set[str], liar: str, claimed: str) -> None:
    """Every owner in the report carries its registry name; the node that claimed another's name is flagged."""
    owners = report["privacy"]["owners"]
    names = sorted(o["owner"] for o in owners)
    assert names == sorted(registry), (
        f"the report names owners {names} by what their replies say; the admitted keys are {sorted(registry)} "
        f"({liar} posed as {claimed})")
    entry = next(o for o in owners if o["owner"] == liar)
    flags = {k: v for k, v in entry.items() if "claim" in k}
    assert claimed in json.dumps(flags), f"{liar}'s claim to be {claimed} is not flagged: {entry}"


def test_7_a_node_posing_as_another_site_is_reported_under_its_own_name(federation: Federation) -> None:
    label = "liar"
    proc = federation.start_node(label, key=SPARE, name="site-b")  # site-e's admitted key, site-b's name
    out = federation.root / "train-impersonation"
    try:
        assert federation.wait_online(SPARE, proc), (federation.root / f"{label}.log").read_text()
        started = time.monotonic()
        run = fedmodel("train", "--coordinator", federation.address, "--ca", str(federation.ca),
                       "--dataset", str(federation.heldout), "--label", "diagnosis", "--clients", "5",
                       "--rounds", "1", "--epsilon", str(RUN_EPSILON), "--out", str(out), "--format", "json",
                       timeout=500)
        print(f"fedmodel train (5 nodes, one lying) took {time.monotonic() - started:.1f} s")
    finally:
        stop([proc])
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    blocked_impersonation(json.loads(run.stdout), {"site-a", "site-b", "site-c", "site-d", SPARE}, SPARE, "site-b")


# ================================================================== a local attacker at a node (after the runs)
# ------------------------------------------------------------------ 8. audit log truncated, head rewritten
def truncate_with_head(log: Path) -> dict[str, Any]:
    """Cut the log's last entry and rewrite ``.head`` to the new last entry, as an unkeyed head allows."""
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 2, "the node's audit log needs two entries to cut one"
    log.write_bytes(b"".join(lines[:-1]))
    last = json.loads(lines[-2])
    head = {"seq": last["seq"], "hash": last["hash"]}
    log.with_name(log.name + ".head").write_text(json.dumps(head, sort_keys=True, separators=(",", ":")) + "\n")
    return json.loads(lines[-1])


def blocked_truncation(verified: Any, removed: dict[str, Any]) -> None:
    """``fedmodel audit-log verify`` exits non-zero on the cut log."""
    assert verified.returncode != 0, (
        f"audit-log verify accepted the log with its last entry ({removed['event']}, seq {removed['seq']}) cut "
        f"and its head rewritten:\n{verified.stdout}")


def test_8_audit_log_cut_and_head_rewritten_fails_verification(federation: Federation) -> None:
    log = federation.state_dir("site-b") / "audit.log"
    assert verify_cli(log).returncode == 0  # intact before the attacker touches it
    removed = truncate_with_head(log)
    blocked_truncation(verify_cli(log), removed)


def verify_cli(log: Path) -> Any:
    """``fedmodel audit-log verify`` as the node's owner runs it."""
    return fedmodel("audit-log", "verify", str(log), "--require-head")


# ------------------------------------------------------------------ 9. deleted ledger
def blocked_fresh_ledger(start_output: str, exited: bool, result: HostileResult | None, spent_before: float) -> None:
    """The node refuses to start, or refuses the first message, naming the audit log's record of spending."""
    if exited:
        assert "audit" in start_output.lower(), start_output[-2000:]
        return
    assert result is not None
    reply = result.reply("after-delete")
    assert reply["error"] is not None, (
        f"the node started on an empty ledger and trained: a fresh budget, although its audit log records "
        f"epsilon {spent_before:.3f} spent before the ledger was deleted (metrics {metrics_of(reply)})")
    assert "audit" in reply["error"].lower(), reply["error"]


def test_9_node_refuses_an_empty_ledger_when_its_audit_log_shows_spending(federation: Federation) -> None:
    site = "site-a"  # spent in test 1 (two trainings), with or without the defences
    spent_before = ledger_epsilon(federation, site)
    assert spent_before > 0, "the node must have spent before its ledger is deleted"
    federation.stop_node(site)
    for path in federation.state_dir(site).glob("privacy-ledger.sqlite*"):
        path.unlink()
    log = federation.root / f"{site}.log"
    offset = log.stat().st_size
    proc = federation.start_node(site)
    exited = not federation.wait_online(site, proc)
    result = None
    if not exited:
        result = federation.run_hostile(FEDMODEL_APP, {}, [[message("after-delete", federation.node_ids[site],
                                                                     "train")]])
    blocked_fresh_ledger(log.read_bytes()[offset:].decode("utf-8", "replace"), exited, result, spent_before)
