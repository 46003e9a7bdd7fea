"""The audit log: every edit, removal, reordering, truncation and torn write is found; appends keep one chain."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import json
import multiprocessing
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fedmodel.security.audit_log import (
    GENESIS,
    AuditLog,
    AuditLogError,
    head_path,
    load_key,
    read_entries,
    verify,
)

ENTRIES = 20
TARGET = 7  # the entry tampered with (seq 7, on line 8)
KEY = b"k" * 32


def _write_chain(path: Path, key: bytes | None = None, n: int = ENTRIES) -> Path:
    log = AuditLog(path, key=key)
    for i in range(n):
        log.append(f"event-{i}", round=i, owner="site-a", epsilon=0.25 * i, tags=["dp", "é"], extra={"ok": True})
    return path


@pytest.fixture()
def chain(tmp_path: Path) -> Path:
    return _write_chain(tmp_path / "audit.jsonl")


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _rehash(entry: dict[str, object]) -> dict[str, object]:
    """What a forger without a key can do: recompute the SHA-256 (with hashlib, an independent oracle)."""
    entry = {k: v for k, v in entry.items() if k != "hash"}
    return {**entry, "hash": hashlib.sha256(_canonical(entry)).hexdigest()}


def test_a_chain_of_entries_verifies(chain: Path) -> None:
    result = verify(chain)
    assert result.ok and result.entries == ENTRIES
    assert result.problems == []
    assert [w.split(" (")[0] for w in result.warnings] == ["unkeyed log"]  # said, not hidden


def test_entries_are_canonical_json_chained_by_sha256(chain: Path) -> None:
    prev = GENESIS
    for seq, raw in enumerate(_lines(chain)):
        entry = json.loads(raw)
        assert raw == _canonical(entry) + b"\n"
        assert set(entry) == {"seq", "time", "event", "fields", "prev", "hash"}
        assert entry["seq"] == seq and entry["prev"] == prev and entry["event"] == f"event-{seq}"
        assert entry["time"].endswith("+00:00")
        assert _rehash(entry)["hash"] == entry["hash"]
        prev = entry["hash"]
    assert json.loads(head_path(chain).read_bytes()) == {"seq": ENTRIES - 1, "hash": prev}


def test_append_returns_the_entry_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    first = log.append("start", run="r1")
    second = log.append("stop", rounds=3)
    assert (first.seq, first.prev, second.seq, second.prev) == (0, GENESIS, 1, first.hash)
    assert second.fields == {"rounds": 3}
    entries, skipped = read_entries(tmp_path / "a.jsonl")
    assert [e.to_dict() for e in entries] == [first.to_dict(), second.to_dict()] and skipped == []


def test_a_new_instance_resumes_the_chain(chain: Path) -> None:
    entry = AuditLog(chain).append("resumed")
    assert entry.seq == ENTRIES and entry.prev == json.loads(_lines(chain)[-2])["hash"]
    assert verify(chain).ok


@pytest.mark.parametrize("mask", [0x01, 0x20])
def test_every_byte_changed_in_an_entry_is_found_on_its_line(chain: Path, mask: int) -> None:
    lines = _lines(chain)
    target = lines[TARGET]
    missed = []
    for pos in range(len(target) - 1):  # every byte but the newline
        edited = bytearray(target)
        edited[pos] ^= mask
        chain.write_bytes(b"".join([*lines[:TARGET], bytes(edited), *lines[TARGET + 1:]]))
        result = verify(chain)
        if result.ok or result.problems[0].line != TARGET + 1:
            missed.append((pos, chr(target[pos]), result.problems[:1]))
    assert missed == []


EDITS: dict[str, Callable[[dict], None]] = {
    "seq": lambda e: e.update(seq=e["seq"] + 1),
    "time": lambda e: e.update(time="2000-01-01T00:00:00.000000+00:00"),
    "event": lambda e: e.update(event="harmless"),
    "field value": lambda e: e["fields"].update(epsilon=0.0),
    "field added": lambda e: e["fields"].update(note="added"),
    "field removed": lambda e: e["fields"].pop("owner"),
    "prev": lambda e: e.update(prev="f" * 64),
    "hash": lambda e: e.update(hash="0" * 64),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_an_edited_field_is_a_hash_mismatch_naming_the_entry(chain: Path, edit: str) -> None:
    lines = _lines(chain)
    entry = json.loads(lines[TARGET])
    EDITS[edit](entry)
    lines[TARGET] = _canonical(entry) + b"\n"
    chain.write_bytes(b"".join(lines))
    result = verify(chain)
    assert not result.ok
    first = result.problems[0]
    assert (first.line, first.event) == (TARGET + 1, entry["event"])
    assert "hash mismatch" in first.what


@pytest.mark.parametrize("edit", ["field value", "event", "time"])
def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(chain: Path, edit: str) -> None:
    lines = _lines(chain)
    entry = json.loads(lines[TARGET])
    EDITS[edit](entry)
    lines[TARGET] = _canonical(_rehash(entry)) + b"\n"
    chain.write_bytes(b"".join(lines))
    first = verify(chain).problems[0]
    assert (first.line, first.seq) == (TARGET + 2, TARGET + 1)
    assert f"prev does not match the hash of line {TARGET + 1}" in first.what


def test_a_line_not_in_canonical_form_is_found(chain: Path) -> None:
    lines = _lines(chain)
    lines[TARGET] = json.dumps(json.loads(lines[TARGET]), sort_keys=True).encode() + b"\n"  # same JSON, spaced
    chain.write_bytes(b"".join(lines))
    first = verify(chain).problems[0]
    assert first.line == TARGET + 1 and "canonical" in first.what


def test_a_removed_middle_entry_is_found(chain: Path) -> None:
    lines = _lines(chain)
    chain.write_bytes(b"".join(lines[:TARGET] + lines[TARGET + 1:]))
    result = verify(chain)
    assert not result.ok
    first = result.problems[0]
    assert (first.line, first.seq) == (TARGET + 1, TARGET + 1)
    assert f"seq {TARGET} missing" in first.what
    assert any("prev does not match" in p.what for p in result.problems)


def test_swapped_entries_are_found(chain: Path) -> None:
    lines = _lines(chain)
    lines[TARGET], lines[TARGET + 1] = lines[TARGET + 1], lines[TARGET]
    chain.write_bytes(b"".join(lines))
    result = verify(chain)
    assert not result.ok and result.problems[0].line == TARGET + 1
    assert any(p.line == TARGET + 2 and "reordered" in p.what for p in result.problems)


def test_a_removed_last_entry_is_found_by_the_head(chain: Path) -> None:
    chain.write_bytes(b"".join(_lines(chain)[:-1]))
    result = verify(chain)
    assert not result.ok and result.entries == ENTRIES - 1
    first = result.problems[0]
    assert (first.line, first.seq) == (ENTRIES, ENTRIES - 1)
    assert "last entries were removed" in first.what


def test_an_emptied_log_is_found_by_the_head(chain: Path) -> None:
    chain.write_bytes(b"")
    result = verify(chain)
    assert not result.ok and "last entries were removed" in result.problems[0].what


def test_a_missing_head_is_a_warning_unless_required(chain: Path) -> None:
    head_path(chain).unlink()
    result = verify(chain)
    assert result.ok and any("no head file" in w for w in result.warnings)
    strict = verify(chain, require_head=True)
    assert not strict.ok and strict.problems[0].line is None and "no head file" in strict.problems[0].what


def test_append_refuses_a_log_without_its_head(chain: Path) -> None:
    head_path(chain).unlink()
    before = chain.read_bytes()
    with pytest.raises(AuditLogError, match="head file .* is missing"):
        AuditLog(chain).append("after")
    assert chain.read_bytes() == before


def test_append_refuses_a_truncated_log(chain: Path) -> None:
    chain.write_bytes(b"".join(_lines(chain)[:-2]))
    with pytest.raises(AuditLogError, match="last entries were removed"):
        AuditLog(chain).append("after")
    assert not verify(chain).ok  # the head was not moved to hide it


def test_a_head_one_entry_behind_is_a_crash_not_tampering(chain: Path) -> None:
    old_head = head_path(chain).read_bytes()
    AuditLog(chain).append("last")
    head_path(chain).write_bytes(old_head)  # as if the process died between the line and the head
    result = verify(chain)
    assert result.ok and any("lags by one" in w for w in result.warnings)
    AuditLog(chain).append("after the crash")
    assert verify(chain) == verify(chain) and verify(chain).ok and len(verify(chain).warnings) == 1


def test_a_forged_line_with_a_good_hash_but_wrong_prev_is_found(chain: Path) -> None:
    forged = _rehash({"seq": ENTRIES, "time": "2030-01-01T00:00:00.000000+00:00", "event": "forged",
                      "fields": {}, "prev": "a" * 64})
    with chain.open("ab") as handle:
        handle.write(_canonical(forged) + b"\n")
    result = verify(chain)
    assert not result.ok
    first = result.problems[0]
    assert (first.line, first.seq, first.event) == (ENTRIES + 1, ENTRIES, "forged")
    assert "prev does not match" in first.what


@pytest.mark.parametrize("tail", [b'{"event":"half-writ', b"", b"{}"])
def test_a_torn_last_line_is_reported_and_blocks_appends(chain: Path, tail: bytes) -> None:
    with chain.open("ab") as handle:
        handle.write(tail if tail else _lines(chain)[-1][:-1])  # b"": a whole entry but no newline
    before = chain.read_bytes()
    result = verify(chain)
    assert not result.ok
    assert result.problems[0].line == ENTRIES + 1 and "torn last line" in result.problems[0].what
    with pytest.raises(AuditLogError, match="last line is torn"):
        AuditLog(chain).append("after")
    assert chain.read_bytes() == before


def test_an_unreadable_last_line_blocks_appends(chain: Path) -> None:
    with chain.open("ab") as handle:
        handle.write(b'{"event":"x"\n')
    result = verify(chain)
    assert result.problems[0].line == ENTRIES + 1 and "invalid JSON" in result.problems[0].what
    with pytest.raises(AuditLogError, match="last line is unreadable"):
        AuditLog(chain).append("after")


def test_append_refuses_an_edited_last_entry(chain: Path) -> None:
    lines = _lines(chain)
    entry = json.loads(lines[-1])
    entry["fields"]["epsilon"] = 0.0
    chain.write_bytes(b"".join([*lines[:-1], _canonical(entry) + b"\n"]))
    with pytest.raises(AuditLogError, match="hash mismatch"):
        AuditLog(chain).append("after")


def test_invalid_json_names_its_line(chain: Path) -> None:
    lines = _lines(chain)
    lines[3] = b"not json\n"
    chain.write_bytes(b"".join(lines))
    result = verify(chain)
    assert [p.line for p in result.problems] == [4]
    assert "invalid JSON" in result.problems[0].what


def test_a_missing_log_cannot_be_verified(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="cannot read the audit log"):
        verify(tmp_path / "nope.jsonl")


def test_an_empty_log_without_head_is_intact(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    result = verify(tmp_path / "empty.jsonl")
    assert result.ok and result.entries == 0


@pytest.mark.parametrize(("fields", "name"), [
    ({"when": object()}, "when"),
    ({"ids": (1, 2)}, "ids"),
    ({"raw": b"x"}, "raw"),
    ({"nested": {"deep": [1, {2, 3}]}}, "nested.deep[1]"),
    ({"d": {1: "a"}}, "d"),
    ({"path": Path("x")}, "path"),
])
def test_values_that_are_not_json_are_rejected_naming_the_field(tmp_path: Path, fields: dict, name: str) -> None:
    with pytest.raises(TypeError, match=re.escape(f"field '{name}'")):
        AuditLog(tmp_path / "a.jsonl").append("e", **fields)
    assert not (tmp_path / "a.jsonl").exists()


def test_non_finite_numbers_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="field 'eps'"):
        AuditLog(tmp_path / "a.jsonl").append("e", eps=float("nan"))


@pytest.mark.parametrize("key", [b"short", "a string key of enough length"])
def test_weak_or_text_keys_are_rejected(tmp_path: Path, key: object) -> None:
    with pytest.raises(ValueError, match="key"):
        AuditLog(tmp_path / "a.jsonl", key=key)  # type: ignore[arg-type]


def test_a_keyed_log_carries_hmacs_and_verifies_with_its_key(tmp_path: Path) -> None:
    path = _write_chain(tmp_path / "k.jsonl", key=KEY)
    entry = json.loads(_lines(path)[0])
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    assert entry["mac"] == std_hmac.new(KEY, _canonical(body), hashlib.sha256).hexdigest()
    assert verify(path, key=KEY).ok
    unkeyed = verify(path)
    assert unkeyed.ok and any("no key was given" in w for w in unkeyed.warnings)
    wrong = verify(path, key=b"w" * 32)
    assert not wrong.ok and wrong.problems[0].line == 1 and "mac mismatch" in wrong.problems[0].what


def test_a_rewritten_chain_without_the_key_is_found(tmp_path: Path) -> None:
    path = _write_chain(tmp_path / "k.jsonl", key=KEY)
    rewritten, prev = [], GENESIS
    for raw in _lines(path):  # a forger drops the MACs and rebuilds every hash, and the head
        entry = {k: v for k, v in json.loads(raw).items() if k not in ("hash", "mac")}
        entry = _rehash({**entry, "prev": prev, "event": "rewritten"})
        rewritten.append(_canonical(entry) + b"\n")
        prev = entry["hash"]
    path.write_bytes(b"".join(rewritten))
    head_path(path).write_bytes(_canonical({"seq": ENTRIES - 1, "hash": prev}))
    assert verify(path).ok  # without the key nothing can tell
    result = verify(path, key=KEY)
    assert not result.ok and result.problems[0].line == 1 and "no mac" in result.problems[0].what
    assert any(p.line is None and "head" in p.what for p in result.problems)


def test_a_keyed_log_refuses_appends_without_its_key(tmp_path: Path) -> None:
    path = _write_chain(tmp_path / "k.jsonl", key=KEY, n=2)
    with pytest.raises(AuditLogError, match="no key was given"):
        AuditLog(path).append("e")
    with pytest.raises(AuditLogError, match="mac mismatch"):
        AuditLog(path, key=b"w" * 32).append("e")


def test_load_key_reads_the_bytes_exactly(tmp_path: Path) -> None:
    (tmp_path / "key").write_bytes(KEY + b"\n")
    assert load_key(tmp_path / "key") == KEY + b"\n"
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(AuditLogError, match="at least 16 bytes"):
        load_key(tmp_path / "short")


def test_threads_appending_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    shared = AuditLog(path)

    def work(writer: int) -> None:
        log = shared if writer % 2 else AuditLog(path)  # one instance shared, and instances of their own
        for i in range(10):
            log.append("tick", writer=writer, i=i)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(path)
    assert result.ok and result.entries == 40


_WORKER = """
from pathlib import Path
from fedmodel.security.audit_log import AuditLog
log = AuditLog(Path({path!r}))
for i in range({n}):
    log.append("tick", writer={writer}, i=i)
"""


def test_processes_appending_keep_one_chain(tmp_path: Path) -> None:
    path, n = tmp_path / "p.jsonl", 60
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=exec, args=(_WORKER.format(path=str(path), n=n, writer=w),))
               for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    result = verify(path)
    assert result.ok and result.entries == 2 * n, result.problems[:3]
    entries, _ = read_entries(path)
    assert sorted((e.fields["writer"], e.fields["i"]) for e in entries) == [(w, i) for w in range(2) for i in range(n)]


# -- keyed node logs: truncation with a rewritten head, roll-back to an older head --------------------------


def _node_log(tmp_path: Path, entries: int) -> tuple[Path, Path]:
    """A node's keyed audit log (as fedmodel node start makes it) with ``entries`` entries."""
    from fedmodel.security.audit_log import default_key_path, open_keyed

    state = tmp_path / "state"
    key_file = default_key_path(state)
    log = open_keyed(state / "audit.log", key_file, create_key=True)
    for i in range(entries):
        log.append("reserve", owner="site-a", epsilon_total=0.1 * (i + 1))
    return state / "audit.log", key_file


def _truncate_and_rewrite_head(path: Path, keep: int) -> None:
    """The attack: cut the log to its first ``keep`` entries and write a head file that matches them."""
    lines = path.read_bytes().splitlines(keepends=True)[:keep]
    path.write_bytes(b"".join(lines))
    last = json.loads(lines[-1])
    head_path(path).write_bytes(_canonical({"seq": last["seq"], "hash": last["hash"]}) + b"\n")


def test_a_truncated_node_log_with_a_rewritten_head_fails_verify_with_its_key(tmp_path: Path) -> None:
    path, key_file = _node_log(tmp_path, 5)
    _truncate_and_rewrite_head(path, 3)
    result = verify(path, key=load_key(key_file), require_head=True)
    assert not result.ok and any("head" in p.what and p.line is None for p in result.problems), result.problems
    with pytest.raises(AuditLogError, match="nothing was appended"):
        AuditLog(path, key=load_key(key_file)).append("more")


def test_the_same_attack_on_an_unkeyed_log_passes_verify_and_is_said_to_be_unkeyed(tmp_path: Path) -> None:
    """What every node wrote at 3f11166: the attack goes through; verify now at least says the log is unkeyed."""
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for i in range(5):
        log.append("reserve", owner="site-a", epsilon_total=0.1 * (i + 1))
    _truncate_and_rewrite_head(path, 3)
    result = verify(path, require_head=True)
    assert result.ok and result.entries == 3 and result.unkeyed
    assert any(w.startswith("unkeyed log") for w in result.warnings)


def test_a_log_rolled_back_to_an_older_head_is_caught_by_the_anchor_beside_the_key(tmp_path: Path) -> None:
    from fedmodel.security.audit_log import anchor_path, open_keyed

    path, key_file = _node_log(tmp_path, 3)
    old_log, old_head = path.read_bytes(), head_path(path).read_bytes()  # a copy the writer kept
    log = open_keyed(path, key_file)
    log.append("reserve", owner="site-a", epsilon_total=0.9)
    path.write_bytes(old_log)
    head_path(path).write_bytes(old_head)  # every MAC is genuine: the key alone cannot tell
    assert verify(path, key=load_key(key_file), require_head=True).ok
    result = verify(path, key=load_key(key_file), require_head=True, anchor=anchor_path(key_file))
    assert not result.ok and "rolled back" in str(result.problems[0]), result.problems
    with pytest.raises(AuditLogError, match="rolled back"):
        log.append("reserve", owner="site-a", epsilon_total=0.9)
    anchor_path(key_file).unlink()  # removing the anchor does not help either
    with pytest.raises(AuditLogError, match="is missing"):
        log.append("reserve", owner="site-a", epsilon_total=0.9)


def test_the_audit_key_is_made_owner_only_outside_the_state_folder(tmp_path: Path) -> None:
    from fedmodel.security.audit_log import anchor_path, default_key_path

    path, key_file = _node_log(tmp_path, 2)
    state = path.parent
    assert key_file == tmp_path / "state.audit-key" and not key_file.is_relative_to(state)
    assert os.stat(key_file).st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    assert os.stat(anchor_path(key_file)).st_mode & 0o777 == 0o600
    assert default_key_path(tmp_path / "state") == key_file


def test_the_head_is_the_count_and_the_last_mac(tmp_path: Path) -> None:
    from fedmodel.security.audit_log import open_keyed

    path, key_file = _node_log(tmp_path, 4)
    head = open_keyed(path, key_file).head()
    last = json.loads(path.read_bytes().splitlines()[-1])
    assert (head.count, head.tip, head.keyed) == (4, last["mac"], True)
    assert AuditLog(tmp_path / "none.log").head().count == 0
