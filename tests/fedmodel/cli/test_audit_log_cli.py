"""``fedmodel audit-log verify`` exits 0 intact, 1 tampered (naming the entry), 2 unreadable; ``show`` lists entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from fedmodel.cli.audit_log import audit_log_app
from fedmodel.security.audit_log import AuditLog, head_path

KEY = b"s" * 32


def _invoke(args: list[str]) -> Result:
    app = typer.Typer()
    app.add_typer(audit_log_app, name="audit-log")
    return CliRunner().invoke(app, ["audit-log", *args])


def _write(path: Path, n: int = 5, key: bytes | None = None) -> Path:
    log = AuditLog(path, key=key)
    for i in range(n):
        log.append(f"round-{i}", round=i, epsilon=0.5 * i)
    return path


@pytest.fixture()
def log_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "audit.jsonl")


def _edit_entry(path: Path, index: int) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[index] = lines[index].replace(b'"epsilon":', b'"epsilon":9')
    path.write_bytes(b"".join(lines))


def test_verify_an_intact_log_exits_0(log_file: Path) -> None:
    result = _invoke(["verify", str(log_file)])
    assert result.exit_code == 0, result.output
    assert "5 entries, chain intact" in result.output


def test_verify_a_tampered_log_exits_1_naming_the_entry(log_file: Path) -> None:
    _edit_entry(log_file, 2)
    result = _invoke(["verify", str(log_file)])
    assert result.exit_code == 1, result.output
    assert "tampered" in result.output
    assert "line 3, seq 2, event 'round-2': hash mismatch" in result.output
    assert "Traceback" not in result.output


def test_verify_a_truncated_log_exits_1(log_file: Path) -> None:
    log_file.write_bytes(b"".join(log_file.read_bytes().splitlines(keepends=True)[:-1]))
    result = _invoke(["verify", str(log_file)])
    assert result.exit_code == 1
    assert "last entries were removed" in result.output


def test_verify_json(log_file: Path) -> None:
    _edit_entry(log_file, 1)
    result = _invoke(["verify", str(log_file), "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["entries"] == 5
    assert report["problems"][0] == {"line": 2, "seq": 1, "event": "round-1", "what": report["problems"][0]["what"]}
    assert "hash mismatch" in report["problems"][0]["what"]


@pytest.mark.parametrize("args", [
    ["verify", "missing.jsonl"],
    ["verify", "."],
    ["verify", "LOG", "--format", "xml"],
    ["verify", "LOG", "--key-file", "no-such-key"],
    ["show", "missing.jsonl"],
    ["show", "LOG", "--format", "xml"],
])
def test_unreadable_input_exits_2_without_a_traceback(
        log_file: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(log_file.parent)
    result = _invoke([str(log_file) if a == "LOG" else a for a in args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output


def test_verify_a_keyed_log_with_its_key_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "k.jsonl", key=KEY)
    (tmp_path / "key").write_bytes(KEY)
    (tmp_path / "wrong").write_bytes(b"w" * 32)
    assert _invoke(["verify", str(path), "--key-file", str(tmp_path / "key")]).exit_code == 0
    wrong = _invoke(["verify", str(path), "--key-file", str(tmp_path / "wrong")])
    assert wrong.exit_code == 1 and "mac mismatch" in wrong.output
    unkeyed = _invoke(["verify", str(path)])
    assert unkeyed.exit_code == 0 and "no key was given" in unkeyed.output


def test_verify_warns_of_a_missing_head_and_can_require_it(log_file: Path) -> None:
    head_path(log_file).unlink()
    lenient = _invoke(["verify", str(log_file)])
    assert lenient.exit_code == 0 and "warning:" in lenient.output and "no head file" in lenient.output
    assert _invoke(["verify", str(log_file), "--require-head"]).exit_code == 1


def test_show_prints_the_entries(log_file: Path) -> None:
    result = _invoke(["show", str(log_file)])
    assert result.exit_code == 0, result.output
    for i in range(5):
        assert f"round-{i}" in result.output


def test_show_last_as_json(log_file: Path) -> None:
    result = _invoke(["show", str(log_file), "--last", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [e["seq"] for e in entries] == [3, 4] and entries[1]["fields"] == {"round": 4, "epsilon": 2.0}


def test_show_skips_unreadable_lines_with_a_warning(log_file: Path) -> None:
    with log_file.open("ab") as handle:
        handle.write(b'{"torn')
    result = _invoke(["show", str(log_file), "--format", "json"])
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 5
    assert "line 6" in result.stderr and "skipped" in result.stderr


def test_verify_finds_a_nodes_default_key_and_anchor_and_catches_a_log_cut_back(tmp_path: Path) -> None:
    """The owner runs `fedmodel audit-log verify STATE/audit.log`: its key beside the state folder is used."""
    from fedmodel.security.audit_log import default_key_path, open_keyed

    state = tmp_path / "state"
    state.mkdir()
    log = open_keyed(state / "audit.log", default_key_path(state), create_key=True)
    for i in range(3):
        log.append("event", i=i)
    assert _invoke(["verify", str(state / "audit.log")]).exit_code == 0
    lines = (state / "audit.log").read_bytes().splitlines(keepends=True)
    (state / "audit.log").write_bytes(b"".join(lines[:-1]))  # cut the last entry, and rewrite the head to match
    last = json.loads(lines[-2])  # as an unkeyed head allows: an attacker without the key can write no other
    head_path(state / "audit.log").write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]}) + "\n")
    shown = _invoke(["verify", str(state / "audit.log")])
    assert shown.exit_code == 1, shown.output
