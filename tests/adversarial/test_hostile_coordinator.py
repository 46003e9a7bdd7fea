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


# ================================================================== 1. noise prediction / replay
def blocked_replay(fed: Federation, result: HostileResult, first: str, second: str, site: str) -> None:
    """Two identical train messages: the updates differ (fresh noise), and the ledger charged both releases."""
    one, two = update_of(result.reply(first)), update_of(result.reply(second))
    assert not np.array_equal(one, two), (
        f"{site} sent two bit-identical updates for the same round: its DP noise is predictable/replayable "
        f"(max |diff| {np.max(np.abs(one - two)):g})")
    entries = fed.ledger_entries(site, result.run_id)
    charged = [e for e in entries if e["status"] == "committed"]
    assert len(charged) >= 2, f"{site}'s ledger charged {len(charged)} release(s) for two trainings: {entries}"


def test_replayed_round_gets_fresh_noise_and_is_charged_twice(federation: Federation) -> None:
    site = "site-a"
    node = federation.node_ids[site]
    same = {"arrays": logreg(), "config": message_config(server_round=1)}
    result = federation.run_hostile(FEDMODEL_APP, {}, [
        [message("replay-1", node, "train", **same)],
        [message("replay-2", node, "train", **same)],
    ])
    blocked_replay(federation, result, "replay-1", "replay-2", site)
