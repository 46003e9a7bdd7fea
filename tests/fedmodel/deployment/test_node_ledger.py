"""A node's start-up checks of its ledger and keyed audit log: a deleted ledger or a cut-back log stops it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmodel.cli.node import node_app
from fedmodel.deployment.node import open_node_ledger
from fedmodel.errors import LedgerError
from fedmodel.privacy.ledger import ledger_path
from fedmodel.privacy.owner_ledger import OwnerAccount, RunIdentity, audit_log_for, open_ledger
from fedmodel.privacy.policy import PrivacyPolicy
from fedmodel.security.audit_log import AuditLog, AuditLogError, default_key_path, head_path
from fedmodel.security.certs import generate_node_keys, init_certs


def _spend(state: Path, key_file: Path) -> float:
    """What a node's ClientApp does on a round: reserve in the ledger, record it in the keyed audit log."""
    open_node_ledger(state, None, owner="site-a", audit_key=key_file)
    account = OwnerAccount("site-a", RunIdentity("run-1", "127.0.0.1:9091"), budget_epsilon=3.0,
                           policy=PrivacyPolicy(), ledger=open_ledger(str(state)),
                           audit=audit_log_for(state, key_file))
    reservation = account.reserve_release("scaling statistics", 2.0, 1e-5)
    assert reservation is not None
    account.commit(reservation)
    open_ledger.cache_clear()  # the next "process" opens the ledger afresh
    return reservation.spent


@pytest.fixture
def spent(tmp_path: Path) -> tuple[Path, Path, float]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key_file = default_key_path(state)
    return state, key_file, _spend(state, key_file)


def test_a_deleted_ledger_is_refused_naming_both_files_and_the_logged_epsilon(spent: tuple[Path, Path, float]) -> None:
    state, key_file, epsilon = spent
    open_node_ledger(state, None, owner="site-a", audit_key=key_file)  # intact: starts
    ledger_path(state).unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(ledger_path(state)) + suffix).unlink(missing_ok=True)
    with pytest.raises(LedgerError) as caught:
        open_node_ledger(state, None, owner="site-a", audit_key=key_file)
    message = str(caught.value)
    assert str(ledger_path(state)) in message and str(state / "audit.log") in message
    assert f"epsilon {epsilon:.4f}" in message and "is missing" in message
    assert not ledger_path(state).exists()  # no fresh, empty ledger was made


def test_an_emptied_ledger_is_refused_too(spent: tuple[Path, Path, float]) -> None:
    state, key_file, _ = spent
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger_path(state)) + suffix).unlink(missing_ok=True)
    open_ledger(str(state)).close()  # an empty ledger put in its place
    open_ledger.cache_clear()
    with pytest.raises(LedgerError, match="holds no entry of this owner"):
        open_node_ledger(state, None, owner="site-a", audit_key=key_file)


def test_node_start_refuses_a_deleted_ledger(spent: tuple[Path, Path, float], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    state, _, epsilon = spent
    monkeypatch.chdir(tmp_path)
    init_certs(Path("certs"), ["localhost"])
    generate_node_keys(Path("keys"), "site-a")
    Path("data.csv").write_text("x,y\n1,0\n")
    for suffix in ("", "-wal", "-shm"):
        Path(str(ledger_path(state)) + suffix).unlink(missing_ok=True)
    result = CliRunner().invoke(node_app, [
        "start", "--coordinator", "127.0.0.1:9091", "--data", "data.csv", "--ca", "certs/ca.crt",
        "--key", "keys/site-a.key", "--state-dir", str(state), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"epsilon {epsilon:.4f}" in " ".join(result.output.split())


def test_node_start_refuses_a_truncated_log_with_a_rewritten_head(spent: tuple[Path, Path, float]) -> None:
    state, key_file, _ = spent
    log = state / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]))  # the commit of the spending cut off, a head written to match
    last = json.loads(lines[-2])
    head_path(log).write_text(json.dumps({"hash": last["hash"], "seq": last["seq"]}, separators=(",", ":")) + "\n")
    with pytest.raises(AuditLogError, match="does not verify"):
        open_node_ledger(state, None, owner="site-a", audit_key=key_file)


def test_an_unkeyed_log_from_an_older_fedmodel_is_refused_with_what_to_do(tmp_path: Path) -> None:
    state = tmp_path / "state"
    AuditLog(state / "audit.log").append("run-start", owner="site-a")
    with pytest.raises(AuditLogError, match="written without a key.*move it aside"):
        open_node_ledger(state, None, owner="site-a", audit_key=default_key_path(state))


def test_an_audit_key_inside_the_state_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data.csv").write_text("x,y\n1,0\n")
    result = CliRunner().invoke(node_app, [
        "start", "--coordinator", "127.0.0.1:9091", "--data", "data.csv", "--insecure", "--state-dir", "state",
        "--audit-key", "state/audit.key", "--device", "cpu"])
    assert result.exit_code == 2 and "inside the state folder" in result.output
    assert not (tmp_path / "state" / "audit.key").exists()


def test_ledger_wal_and_shm_files_are_as_private_as_the_ledger(spent: tuple[Path, Path, float]) -> None:
    state, _, _ = spent
    ledger = open_ledger(str(state))  # held open: SQLite keeps its -wal and -shm files while connected
    try:
        ledger.spent("site-a")
        files = [ledger_path(state), *(Path(str(ledger_path(state)) + s) for s in ("-wal", "-shm"))]
        assert all(f.exists() for f in files)
        assert {f.name: os.stat(f).st_mode & 0o777 for f in files} == {f.name: 0o600 for f in files}
    finally:
        ledger.close()
        open_ledger.cache_clear()
