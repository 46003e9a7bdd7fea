"""``fedmodel ledger show``: table and JSON per owner, the entries of one owner, one error line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from fedmodel.cli.ledger import LEDGER_FILENAME, ledger_app
from fedmodel.privacy.ledger import PrivacyLedger, load_or_create_key


def invoke(args: list[str]) -> Result:
    app = typer.Typer()
    app.add_typer(ledger_app, name="ledger")
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def fill(state: Path, key: bytes | None = None) -> None:
    with PrivacyLedger(state / LEDGER_FILENAME, key=key) as ledger:
        for run_id, steps in (("run-1", 100), ("run-2", 50)):
            reservation = ledger.reserve("alice", run_id=run_id, coordinator="hospital-coordinator",
                                         noise_multiplier=1.5, sample_rate=1.0, steps=steps, delta=1e-5,
                                         budget_epsilon=100.0)
            if run_id == "run-1":
                ledger.commit(reservation)
        ledger.reserve("bob", run_id="run-2", coordinator="hospital-coordinator", noise_multiplier=1.5,
                       sample_rate=1.0, steps=10, delta=1e-6, budget_epsilon=100.0)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    fill(tmp_path)
    return tmp_path


def test_table_lists_every_owner(state: Path) -> None:
    result = invoke(["ledger", "show", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert "privacy ledger" in result.output
    assert "alice" in result.output and "bob" in result.output
    assert "1e-05" in result.output and "1e-06" in result.output


def test_json_per_owner(state: Path) -> None:
    result = invoke(["ledger", "show", "--state-dir", str(state), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["encrypted"] is False and data["ledger"] == str(state / LEDGER_FILENAME)
    alice, bob = data["owners"]
    assert (alice["owner"], alice["reserved"], alice["committed"], alice["runs"]) == ("alice", 1, 1, ["run-1", "run-2"])
    assert (bob["owner"], bob["reserved"], bob["committed"], bob["runs"]) == ("bob", 1, 0, ["run-2"])
    assert bob["delta"] == 1e-6
    with PrivacyLedger(state / LEDGER_FILENAME) as ledger:
        assert alice["epsilon"] == ledger.spent("alice") and bob["epsilon"] == ledger.spent("bob")
    assert "entries" not in data


def test_one_owner_with_its_entries(state: Path) -> None:
    result = invoke(["ledger", "show", "--state-dir", str(state), "--owner", "alice", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [o["owner"] for o in data["owners"]] == ["alice"]
    assert [(e["run_id"], e["status"], e["steps"]) for e in data["entries"]] == [
        ("run-1", "committed", 100), ("run-2", "reserved", 50)]
    table = invoke(["ledger", "show", "--state-dir", str(state), "--owner", "alice"])
    assert table.exit_code == 0, table.output
    assert "entries of owner alice" in table.output and "hospital-coordinator" in table.output


def test_encrypted_ledger_needs_its_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "ledger.key"
    fill(tmp_path, load_or_create_key(key_file))
    result = invoke(["ledger", "show", "--state-dir", str(tmp_path), "--key-file", str(key_file), "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["encrypted"] is True and [o["owner"] for o in data["owners"]] == ["alice", "bob"]
    refused = invoke(["ledger", "show", "--state-dir", str(tmp_path)])
    assert refused.exit_code == 2 and "is encrypted" in refused.output
    other = tmp_path / "other.key"
    other.write_bytes(b"\x01" * 32)
    wrong = invoke(["ledger", "show", "--state-dir", str(tmp_path), "--key-file", str(other)])
    assert wrong.exit_code == 2 and "encrypted with a different key" in wrong.output


@pytest.mark.parametrize(("folder", "message"), [("absent", "no state folder"), (".", "no privacy ledger in")])
def test_missing_state_dir_or_ledger_exits_2(tmp_path: Path, folder: str, message: str) -> None:
    result = invoke(["ledger", "show", "--state-dir", str(tmp_path / folder)])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / LEDGER_FILENAME).exists()  # showing never creates a ledger


@pytest.mark.parametrize(("args", "message"), [
    (["--owner", "carol"], "owner 'carol' has no entry"),
    (["--format", "xml"], "--format 'xml'"),
    (["--key-file", "/nonexistent/key"], "no ledger key file"),
])
def test_bad_options_exit_2_with_one_line(state: Path, args: list[str], message: str) -> None:
    result = invoke(["ledger", "show", "--state-dir", str(state), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_not_a_ledger_exits_2(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILENAME).write_text("not a database at all, just words " * 50)
    result = invoke(["ledger", "show", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2 and "is not a fedmodel privacy ledger" in result.output
