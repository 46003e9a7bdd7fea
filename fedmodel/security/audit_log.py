"""An append-only, hash-chained audit trail in JSON lines, with an optional HMAC key.

Each line is one entry, written in canonical JSON (sorted keys, no spaces, ASCII only)::

    {"event":"round-trained","fields":{...},"hash":"...","prev":"...","seq":3,"time":"2025-...+00:00"}

``hash`` is the SHA-256 of the canonical JSON of the entry without ``hash`` (so it covers ``prev``, the hash
of the entry before; ``"0" * 64`` for the first). With a key, ``mac`` is the HMAC-SHA256 of the entry without
``hash`` and ``mac``: whoever rewrites the whole chain without the key is caught too.

The chain alone cannot show that its *last* entries were cut off, so every append also writes the head
anchor ``<log>.head`` (``{"seq", "hash"}``, plus ``mac`` with a key) atomically. :func:`verify` compares the
log with it. A log with entries and no head file verifies with a *warning* (the log may have been copied
without it; pass ``require_head=True`` to fail instead), but :meth:`AuditLog.append` refuses to go on from
it, as it refuses a torn last line or a head that the log does not match: appending would hide the damage.

A deployed node keys its log (``fedmodel node start --audit-key``, a file outside the state folder) and
keeps a second copy of the head beside the key (``<key>.anchor``, :func:`anchor_path`); each reply carries
the head to the coordinator, which keeps it. What this detects: edits, removed or cut-off entries and a
rewritten head by anyone without the key; a log cut back to an older genuine head (kept by the writer) by
the anchor, or, if the anchor is rolled back too, by the coordinator's copy of the counts. What it does
not: someone holding the key and able to rewrite the anchor (the node's own account, as a rule) can
rewrite history the coordinator has not seen yet; the key guards against writers of the state folder
only, not against the owner's own operating-system account.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import hashes, hmac

from fedmodel.errors import FedModelError
from fedmodel.fsio import atomic_write, load_or_create_secret, read_secret

__all__ = [
    "GENESIS", "AuditEntry", "AuditHead", "AuditLog", "AuditLogError", "Problem", "VerifyResult", "anchor_path",
    "default_key_path", "head_path", "load_key", "open_keyed", "read_entries", "verify",
]

GENESIS = "0" * 64
MIN_KEY_BYTES = 16
KEY_BYTES = 32  # the keys fedmodel makes
LOG_MODE = 0o600
_KEYS = frozenset({"seq", "time", "event", "fields", "prev", "hash"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AuditLogError(FedModelError):
    """An audit log cannot be read, or appending to it would hide damage; the message names the file and line."""

    exit_code = 2


@dataclass(frozen=True)
class AuditEntry:
    """One line of the log."""

    seq: int
    time: str
    event: str
    fields: Mapping[str, Any]
    prev: str
    hash: str
    mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as written (``mac`` only when the log is keyed)."""
        entry = {"seq": self.seq, "time": self.time, "event": self.event, "fields": dict(self.fields),
                 "prev": self.prev, "hash": self.hash}
        if self.mac is not None:
            entry["mac"] = self.mac
        return entry


@dataclass(frozen=True)
class AuditHead:
    """Where a log stands: its entry ``count`` and ``tip`` (the last entry's mac if ``keyed``, else its hash)."""

    count: int
    tip: str
    keyed: bool


@dataclass(frozen=True)
class Problem:
    """What is wrong, where: 1-based ``line`` of the log (None: the head file), the ``seq`` and ``event`` it claims."""

    line: int | None
    seq: int | None
    event: str | None
    what: str

    def __str__(self) -> str:
        where = "head file" if self.line is None else f"line {self.line}"
        if self.seq is not None:
            where += f", seq {self.seq}"
        if self.event is not None:
            where += f", event {self.event!r}"
        return f"{where}: {self.what}"


@dataclass(frozen=True)
class VerifyResult:
    """The verdict of :func:`verify`: ``ok`` when there is no problem (warnings do not count)."""

    path: Path
    entries: int
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    keyed_entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unkeyed(self) -> bool:
        """Entries and not one of them with a mac: a log written without a key (before logs were keyed)."""
        return self.entries > 0 and self.keyed_entries == 0

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "ok": self.ok, "entries": self.entries,
                "problems": [vars(p) for p in self.problems], "warnings": list(self.warnings)}


def head_path(path: Path) -> Path:
    """The head anchor file of the log at ``path``: ``<log>.head`` beside it."""
    return path.with_name(path.name + ".head")


def load_key(path: Path) -> bytes:
    """The HMAC key in ``path``: its bytes exactly as stored (a trailing newline is part of the key)."""
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise AuditLogError(f"cannot read the key file {path}: {exc.strerror or exc}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise AuditLogError(f"key file {path}: {len(key)} bytes, at least {MIN_KEY_BYTES} bytes needed")
    return key


def default_key_path(state_dir: Path) -> Path:
    """Where a node or coordinator keeps its audit key by default: ``<state-dir>.audit-key``, beside the folder.

    Outside the state folder, so that whoever copies, restores or rewrites that folder (a backup put back,
    a shared folder another account can write) does not get or replace the key with it; beside it, so an
    owner who never names a key still gets one, and one per state folder.
    """
    state_dir = Path(state_dir).expanduser().absolute()
    return state_dir.with_name(state_dir.name + ".audit-key")


def anchor_path(key_file: Path) -> Path:
    """The outside copy of a log's head, kept beside its key: ``<key>.anchor``."""
    return Path(key_file).with_name(Path(key_file).name + ".anchor")


def open_keyed(path: Path, key_file: Path, *, create_key: bool = False) -> AuditLog:
    """The log at ``path`` keyed with the key in ``key_file`` (created 0600 if ``create_key``), anchored beside it.

    Raises AuditLogError naming the key file if it is missing (and not to be created) or not a key.
    """
    try:
        key = load_or_create_secret(key_file, KEY_BYTES) if create_key else read_secret(key_file, KEY_BYTES)
    except FileNotFoundError:
        raise AuditLogError(f"no audit key file at {key_file} (fedmodel node start creates it)") from None
    except OSError as exc:
        raise AuditLogError(f"cannot read or create the audit key file {key_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise AuditLogError(f"audit key: {exc}") from None
    return AuditLog(path, key=key, anchor=anchor_path(key_file))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize().hex()


def _hmac(key: bytes, data: bytes) -> str:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize().hex()


def _check_key(key: bytes | None) -> None:
    if key is not None and (not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES):
        raise ValueError(f"key: expected at least {MIN_KEY_BYTES} bytes, got {type(key).__name__} "
                         f"of length {len(key) if isinstance(key, bytes | str) else '?'}")


def _check_value(name: str, value: Any) -> None:
    """Raise TypeError (ValueError for NaN or infinity) naming the field unless ``value`` is plain JSON."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"field {name!r}: {value!r} is not a finite number (JSON has no NaN or infinity)")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(f"{name}[{i}]", item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"field {name!r}: key {key!r} is a {type(key).__name__}, JSON keys are strings")
            _check_value(f"{name}.{key}", item)
        return
    raise TypeError(f"field {name!r}: a {type(value).__name__} is not a JSON value "
                    "(use str, int, float, bool, None, list or dict)")


def _seal(body: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """``body`` with its ``mac`` (keyed) and ``hash``."""
    sealed = dict(body)
    if key is not None:
        sealed["mac"] = _hmac(key, _canonical(body))
    sealed["hash"] = _sha256(_canonical(sealed))
    return sealed


def _shape_error(entry: Any) -> str | None:
    """Why ``entry`` is not an entry at all, or None."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an entry object"
    keys = set(entry)
    if keys - {"mac"} != _KEYS:
        missing, extra = sorted(_KEYS - keys), sorted(keys - _KEYS - {"mac"})
        return "malformed entry: " + "; ".join(
            text for text in (missing and f"missing {', '.join(missing)}", extra and f"unexpected {', '.join(extra)}")
            if text)
    seq = entry["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return f"malformed entry: seq {seq!r} is not a whole number >= 0"
    for name, kind in (("time", str), ("event", str), ("fields", dict)):
        if not isinstance(entry[name], kind):
            return f"malformed entry: {name} is a JSON {type(entry[name]).__name__}"
    for name in ("prev", "hash", "mac"):
        if name in entry and not (isinstance(entry[name], str) and _HEX64.fullmatch(entry[name])):
            return f"malformed entry: {name} is not 64 lowercase hex digits"
    return None


def _entry_problems(entry: dict[str, Any], raw: bytes, key: bytes | None) -> list[str]:
    """What is wrong with a well-shaped entry on its own (not its place in the chain)."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
    found = []
    if _sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})) != entry["hash"]:
        found.append("hash mismatch: the entry was changed after it was written")
    elif raw != _canonical(entry) + b"\n":
        found.append("not in canonical form: the line was changed after it was written")
    try:
        when = dt.datetime.fromisoformat(entry["time"])
        if when.utcoffset() != dt.timedelta(0):
            found.append(f"time {entry['time']!r} is not UTC")
    except ValueError:
        found.append(f"time {entry['time']!r} is not ISO-8601")
    if key is not None:
        if "mac" not in entry:
            found.append("no mac: written without a key")
        elif _hmac(key, _canonical(body)) != entry["mac"]:
            found.append("mac mismatch: not written with this key, or changed")
    return found


def _parse(raw: bytes) -> tuple[Any, str | None]:
    try:
        return json.loads(raw.decode("utf-8")), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def _read_head(path: Path, key: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """The head anchor of the log at ``path`` (None if there is no file) and what is wrong with it."""
    return _read_anchor(head_path(path), key)


def _read_anchor(file: Path, key: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """A head anchor file, ``<log>.head`` or an outside copy (None if there is no file), and what is wrong."""
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read {file.name}: {exc.strerror or exc}"
    head, error = _parse(raw)
    if error is not None:
        return None, f"{file.name}: {error}"
    keys = {"seq", "hash"} | ({"mac"} if key is not None else set())
    if (not isinstance(head, dict) or not keys <= set(head) <= {"seq", "hash", "mac"}
            or not isinstance(head["seq"], int) or isinstance(head["seq"], bool) or head["seq"] < 0
            or not isinstance(head["hash"], str) or not _HEX64.fullmatch(head["hash"])):
        return None, f"{file.name}: not a head anchor {{{', '.join(sorted(keys))}}}"
    if key is not None and _hmac(key, _canonical({"seq": head["seq"], "hash": head["hash"]})) != head["mac"]:
        return None, f"{file.name}: mac mismatch (not written with this key, or changed)"
    return head, None


@dataclass
class _Chain:
    """The running state of :func:`verify` over the lines of a log."""

    key: bytes | None
    entries: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    last: dict[str, Any] | None = None
    last_line: int = 0
    after_unreadable: bool = False
    keyed_entries: int = 0
    hashes: dict[int, str] = field(default_factory=dict)

    def problem(self, line: int | None, what: str, entry: Mapping[str, Any] | None = None) -> None:
        seq = entry.get("seq") if entry is not None and isinstance(entry.get("seq"), int) else None
        event = entry.get("event") if entry is not None and isinstance(entry.get("event"), str) else None
        self.problems.append(Problem(line, seq, event, what))

    def add(self, number: int, raw: bytes, is_last: bool) -> None:
        if not raw.endswith(b"\n"):
            self.problem(number, "torn last line: no newline at its end (a crash while it was written?)")
            self.after_unreadable = True
            return
        if raw.strip() == b"":
            self.problem(number, "empty line")
            self.after_unreadable = True
            return
        entry, error = _parse(raw)
        error = error or _shape_error(entry)
        if error is not None:
            self.problem(number, error + (" (a torn last line?)" if is_last and "JSON" in error else ""),
                         entry if isinstance(entry, dict) else None)
            self.after_unreadable = True
            return
        for what in _entry_problems(entry, raw, self.key):
            self.problem(number, what, entry)
        self._link(number, entry)
        self.entries += 1
        self.keyed_entries += "mac" in entry
        self.hashes[entry["seq"]] = entry["hash"]
        self.last, self.last_line, self.after_unreadable = entry, number, False

    def _link(self, number: int, entry: dict[str, Any]) -> None:
        """Check that ``entry`` follows the entry before it."""
        if self.after_unreadable:
            return  # the line before could not be read: nothing to compare with
        seq, expected = entry["seq"], 0 if self.last is None else self.last["seq"] + 1
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected} to {seq - 1}"
            self.problem(number, f"seq {seq} where {expected} was expected: {missing} missing (removed?)", entry)
        elif seq < expected:
            self.problem(number, f"seq {seq} where {expected} was expected: entries reordered or duplicated", entry)
        prev = GENESIS if self.last is None else self.last["hash"]
        if entry["prev"] != prev:
            before = "the start of the chain" if self.last is None else f"the hash of line {self.last_line}"
            self.problem(number, f"prev does not match {before}: the chain is broken", entry)

    def check_head(self, path: Path, number_of_lines: int, require_head: bool) -> None:
        head, error = _read_head(path, self.key)
        if error is not None:
            self.problem(None, error)
            return
        if head is None:
            if self.entries and require_head:
                self.problem(None, f"no head file {head_path(path).name}: removal of the last entries "
                                   "cannot be ruled out")
            elif self.entries:
                self.warnings.append(f"no head file {head_path(path).name}: removal of the last entries "
                                            "cannot be detected")
            return
        last_seq = -1 if self.last is None else self.last["seq"]
        if head["seq"] > last_seq:
            self.problem(number_of_lines + 1, f"missing: the head file records seq {head['seq']} but the log ends "
                                              f"at seq {last_seq}: its last entries were removed",
                         {"seq": head["seq"]})
        elif self.hashes.get(head["seq"]) != head["hash"]:
            self.problem(None, f"the head file records hash {head['hash'][:12]}... for seq {head['seq']}, "
                               "which the log does not hold: log or head replaced")
        elif head["seq"] == last_seq - 1:
            self.warnings.append(f"the head file lags by one entry (seq {head['seq']}): a crash between "
                                        "writing the last entry and the head?")
        elif head["seq"] < last_seq:
            self.problem(None, f"the head file records seq {head['seq']} but the log goes on to seq {last_seq}: "
                               "entries were appended by someone else")

    def check_anchor(self, file: Path, number_of_lines: int) -> None:
        """Compare the log with the copy of its head kept outside the state folder (beside the key)."""
        head, error = _read_anchor(file, self.key)
        last_seq = -1 if self.last is None else self.last["seq"]
        if error is not None:
            self.problem(None, f"anchor {error}")
        elif head is None:
            if last_seq > 0:
                self.problem(None, f"no anchor file {file}: the copy of the head kept outside the state folder "
                                   "is missing")
        elif head["seq"] > last_seq:
            self.problem(number_of_lines + 1, f"rolled back: the anchor {file.name} records seq {head['seq']} but "
                                              f"the log ends at seq {last_seq}: its last entries were removed",
                         {"seq": head["seq"]})
        elif self.hashes.get(head["seq"]) != head["hash"]:
            self.problem(None, f"the anchor {file.name} records hash {head['hash'][:12]}... for seq {head['seq']}, "
                               "which the log does not hold: log replaced")
        elif head["seq"] < last_seq - 1:
            self.problem(None, f"the anchor {file.name} records seq {head['seq']} but the log goes on to seq "
                               f"{last_seq}: entries were appended without updating it")


def _lines(handle: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """(1-based number, raw line with its newline, is it the last) for each line."""
    previous: bytes | None = None
    number = 0
    for raw in handle:
        if previous is not None:
            yield number, previous, False
        number, previous = number + 1, raw
    if previous is not None:
        yield number, previous, True


def verify(path: Path, *, key: bytes | None = None, require_head: bool = False,
           anchor: Path | None = None) -> VerifyResult:
    """Check every line of the log at ``path`` and its head file; tampering is reported, never raised.

    ``anchor`` is a copy of the head kept elsewhere (:class:`AuditLog` ``anchor``): a log cut back to an
    older head, with that older head file put back, is caught by it. A log written without a key is
    read and checked as before, with a warning that it is unkeyed.

    Raises AuditLogError if the log cannot be read at all (missing, a folder, no permission).
    """
    _check_key(key)
    chain = _Chain(key)
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # no append half-way through what we read
            number = 0
            for number, raw, is_last in _lines(handle):
                chain.add(number, raw, is_last)
            chain.check_head(Path(path), number, require_head)
            if anchor is not None:
                chain.check_anchor(Path(anchor), number)
    except OSError as exc:
        raise AuditLogError(f"cannot read the audit log {path}: {exc.strerror or exc}") from exc
    if key is None and chain.keyed_entries:
        chain.warnings.append("the entries carry MACs but no key was given: authenticity not checked")
    if chain.entries and not chain.keyed_entries:
        chain.warnings.append("unkeyed log (written without an HMAC key): whoever can write it can cut its last "
                              "entries off and rewrite its head file undetected")
    return VerifyResult(Path(path), chain.entries, chain.problems, chain.warnings, chain.keyed_entries)


def read_entries(path: Path) -> tuple[list[AuditEntry], list[Problem]]:
    """The entries of the log that can be read, and the lines that cannot (no checks: see :func:`verify`)."""
    entries: list[AuditEntry] = []
    skipped: list[Problem] = []
    try:
        with open(path, "rb") as handle:
            for number, raw, _ in _lines(handle):
                entry, error = _parse(raw)
                error = error or _shape_error(entry)
                if error is None:
                    entries.append(AuditEntry(**entry))
                else:
                    skipped.append(Problem(number, None, None, error))
    except OSError as exc:
        raise AuditLogError(f"cannot read the audit log {path}: {exc.strerror or exc}") from exc
    return entries, skipped


class AuditLog:
    """Append entries to the hash-chained log at ``path`` (created on the first append).

    Appends are serialised between threads (a lock) and processes (``flock`` on the log), each line is
    flushed and fsynced before the head file is replaced. Every append re-reads the end of the log, so
    several writers, in this process or others, extend one chain.
    """

    def __init__(self, path: Path, *, key: bytes | None = None, anchor: Path | None = None) -> None:
        _check_key(key)
        self.path = Path(path)
        self.anchor = None if anchor is None else Path(anchor)
        self._key = key
        self._lock = threading.Lock()

    @property
    def keyed(self) -> bool:
        """Whether entries are written with an HMAC key."""
        return self._key is not None

    def verify(self, *, require_head: bool = True) -> VerifyResult:
        """:func:`verify` of this log with its key and anchor."""
        return verify(self.path, key=self._key, require_head=require_head, anchor=self.anchor)

    def head(self) -> AuditHead:
        """The log's entry count and tip (its last entry's mac when keyed, else its hash), checked on its own.

        Raises AuditLogError as :meth:`append` does when the log's end is torn or damaged.
        """
        with self._lock:
            try:
                handle = open(self.path, "rb")
            except FileNotFoundError:
                return AuditHead(0, GENESIS, self.keyed)
            except OSError as exc:
                raise AuditLogError(f"cannot read the audit log {self.path}: {exc.strerror or exc}") from exc
            with handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
                last = self._last_entry(handle)
        if last is None:
            return AuditHead(0, GENESIS, self.keyed)
        return AuditHead(last["seq"] + 1, last.get("mac", last["hash"]), "mac" in last)

    def append(self, event: str, **fields: Any) -> AuditEntry:
        """Write one entry and return it.

        Raises TypeError/ValueError naming a field whose value is not plain JSON, and AuditLogError if the
        log's end is torn, edited or does not match its head file (nothing is written then).
        """
        if not isinstance(event, str) or not event:
            raise ValueError(f"event: expected a non-empty string, got {event!r}")
        for name, value in fields.items():
            _check_value(name, value)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, LOG_MODE)
            except OSError as exc:
                raise AuditLogError(f"cannot open the audit log {self.path}: {exc.strerror or exc}") from exc
            with os.fdopen(fd, "r+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                last = self._last_entry(handle)
                self._check_head(last)
                self._check_anchor(last)
                body = {"seq": 0 if last is None else last["seq"] + 1,
                        "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                        "event": event, "fields": fields, "prev": GENESIS if last is None else last["hash"]}
                entry = _seal(body, self._key)
                handle.write(_canonical(entry) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
                self._write_head(entry)
        return AuditEntry(**entry)

    def _refuse(self, why: str) -> AuditLogError:
        return AuditLogError(f"audit log {self.path}: {why}; nothing was appended (run `fedmodel audit-log "
                             "verify` on it)")

    def _last_entry(self, handle: BinaryIO) -> dict[str, Any] | None:
        """The last entry, checked on its own, or None if the log is empty."""
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return None
        start, tail = size, b""
        while start > 0 and b"\n" not in tail[:-1]:
            start = max(0, start - 4096)
            handle.seek(start)
            tail = handle.read(size - start)
        raw = tail[tail.rfind(b"\n", 0, len(tail) - 1) + 1:]
        if not raw.endswith(b"\n"):
            raise self._refuse("its last line is torn (no newline at its end: a crash while it was written?)")
        entry, error = _parse(raw)
        error = error or _shape_error(entry)
        if error is not None:
            raise self._refuse(f"its last line is unreadable: {error}")
        if self._key is None and "mac" in entry:
            raise self._refuse("it is keyed (its entries carry MACs) but no key was given")
        problems = _entry_problems(entry, raw, self._key)
        if problems:
            raise self._refuse(f"its last entry (seq {entry['seq']}) is damaged: {problems[0]}")
        return entry

    def _check_head(self, last: dict[str, Any] | None) -> None:
        head, error = _read_head(self.path, self._key)
        if error is not None:
            raise self._refuse(error)
        if head is None:
            if last is not None:
                raise self._refuse(f"its head file {head_path(self.path).name} is missing, so removal of its last "
                                   "entries cannot be ruled out")
            return
        if last is None or head["seq"] > last["seq"]:
            raise self._refuse(f"its head file records seq {head['seq']} but the log ends at seq "
                               f"{-1 if last is None else last['seq']}: its last entries were removed")
        if (head["seq"], head["hash"]) not in ((last["seq"], last["hash"]), (last["seq"] - 1, last["prev"])):
            raise self._refuse(f"its head file (seq {head['seq']}) does not match its last entries")

    def _check_anchor(self, last: dict[str, Any] | None) -> None:
        """The outside copy of the head: the log may not have gone back behind it."""
        if self.anchor is None:
            return
        head, error = _read_anchor(self.anchor, self._key)
        if error is not None:
            raise self._refuse(f"its anchor {error}")
        last_seq = -1 if last is None else last["seq"]
        if head is None:
            if last_seq > 0:  # 0: a crash between the first entry and its anchor
                raise self._refuse(f"the copy of its head kept outside the state folder, {self.anchor}, is "
                                   "missing, so a roll-back cannot be ruled out (put the file back)")
            return
        if last is None or head["seq"] > last_seq:
            raise self._refuse(f"it was rolled back: {self.anchor} records seq {head['seq']} but the log ends at "
                               f"seq {last_seq} (its last entries were removed, or an older copy was put back)")
        if (head["seq"], head["hash"]) not in ((last["seq"], last["hash"]), (last["seq"] - 1, last["prev"])):
            raise self._refuse(f"it does not match {self.anchor} (seq {head['seq']}): replaced, or appended to "
                               "without its anchor")

    def _write_head(self, entry: Mapping[str, Any]) -> None:
        head: dict[str, Any] = {"seq": entry["seq"], "hash": entry["hash"]}
        if self._key is not None:
            head["mac"] = _hmac(self._key, _canonical(head))
        atomic_write(head_path(self.path), _canonical(head) + b"\n", mode=LOG_MODE)
        if self.anchor is not None:
            atomic_write(self.anchor, _canonical(head) + b"\n", mode=LOG_MODE)
