"""Each ledger entry records the SHA-256 of the data file it was spent on; older ledgers gain the column."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from fedmodel.privacy.ledger import PrivacyLedger, load_or_create_key

RUN = {"coordinator": "c", "noise_multiplier": 1.5, "sample_rate": 0.1, "steps": 10, "delta": 1e-5,
       "budget_epsilon": 10.0}


@pytest.mark.parametrize("encrypted", [False, True])
def test_each_entry_records_the_data_it_was_spent_on(tmp_path: Path, encrypted: bool) -> None:
    shard_a, shard_b = (hashlib.sha256(name).hexdigest() for name in (b"shard a", b"shard b"))
    key = load_or_create_key(tmp_path / "k") if encrypted else None
    with PrivacyLedger(tmp_path / "l.sqlite", key=key) as ledger:
        ledger.reserve("site", run_id="r1", data=shard_a, **RUN)
        ledger.reserve("site", run_id="r2", data=shard_b, **RUN)  # a new shard draws on the same budget
        ledger.reserve("site", run_id="r3", **RUN)
        assert [e.data for e in ledger.entries("site")] == [shard_a, shard_b, ""]
    assert (shard_a.encode() in (tmp_path / "l.sqlite").read_bytes()) is not encrypted


def test_a_ledger_made_before_data_was_recorded_opens_and_records_it(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with PrivacyLedger(path) as ledger:
        ledger.reserve("site", run_id="r1", **RUN)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE entries DROP COLUMN data")  # the schema of 3f11166
    db.close()
    with PrivacyLedger(path) as ledger:
        ledger.reserve("site", run_id="r2", data="ab" * 32, **RUN)
        assert [e.data for e in ledger.entries("site")] == ["", "ab" * 32]
