"""The owner's privacy ledger: every DP-SGD run that touched an owner's data, in one durable SQLite file.

Each entry is one run's reservation of (noise multiplier, sample rate, steps, delta) for one owner.
All entries of an owner, reserved or committed, are composed with RDP over Opacus' default orders,
so the total equals Opacus' ``RDPAccountant`` over the same history. A reservation counts as spent
from the moment it is written: a run that crashes mid-training leaves its epsilon spent. No call
ever lowers an owner's total.

Layout (schema 1): ``owners`` holds each owner's running RDP curve by reference to ``curves``, a
table of distinct curves (with their reference counts), so the budget check reads one row instead
of replaying entries, and a million simulated owners with the same history share one curve.
``entries`` is indexed by owner. Every change is one ``BEGIN IMMEDIATE`` transaction in WAL mode
with ``synchronous=FULL``: a committed transaction survives SIGKILL and power loss.

With a 32-byte key, owner names are stored as HMAC-SHA256 (lookups stay indexed) and run ids,
coordinators, parameters and names as AES-GCM ciphertext bound to their owner and column. Curves
are AES-GCM ciphertext addressed by a keyed HMAC of their content: the file shows which owners
have equal histories (as their entry counts and times already do), never the parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmodel.errors import LedgerError, PrivacyBudgetExceeded
from fedmodel.fsio import load_or_create_secret, read_secret
from fedmodel.privacy import rdp
from fedmodel.privacy.accounting import ACCOUNTANT

LEDGER_FILENAME = "privacy-ledger.sqlite"
KEY_BYTES = 32
SCHEMA_VERSION = 1
APPLICATION_ID = 0x464D4C47  # "FMLG" in the SQLite header: this file is a fedmodel ledger
RESERVED, COMMITTED = "reserved", "committed"
_STATUS = {0: RESERVED, 1: COMMITTED}
_PARAMS = struct.Struct("<ddqd")  # noise multiplier, sample rate, steps, delta
_KEY_CHECK = b"fedmodel privacy ledger key check"
_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE curves (id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE, rdp BLOB NOT NULL, refs INTEGER NOT NULL);
CREATE TABLE owners (id INTEGER PRIMARY KEY, owner BLOB NOT NULL UNIQUE, name BLOB, curve INTEGER NOT NULL,
                     reserved INTEGER NOT NULL, committed INTEGER NOT NULL);
CREATE TABLE entries (id INTEGER PRIMARY KEY, owner INTEGER NOT NULL, status INTEGER NOT NULL, created REAL NOT NULL,
                      run_id BLOB NOT NULL, coordinator BLOB NOT NULL, params BLOB NOT NULL, data BLOB);
CREATE INDEX entries_by_owner ON entries(owner);
"""


def ledger_path(state_dir: Path) -> Path:
    """Where a node (or a simulation) keeps its ledger inside its state folder."""
    return Path(state_dir) / LEDGER_FILENAME


@dataclass(frozen=True)
class ReservationRequest:
    """One run's planned DP-SGD for one owner; checked on construction."""

    owner: str
    run_id: str
    coordinator: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    budget_epsilon: float
    data: str = ""  # SHA-256 (hex) of the data file the run trains on ("" = not a file)

    def __post_init__(self) -> None:
        object.__setattr__(self, "owner", str(self.owner))
        if not isinstance(self.data, str):
            raise ValueError(f"data must be a string (a SHA-256 in hex, or empty), got {self.data!r}")
        for name in ("owner", "run_id", "coordinator"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        checks = [
            ("noise_multiplier", self.noise_multiplier, 0.0 < self.noise_multiplier < math.inf, "> 0 and finite"),
            ("sample_rate", self.sample_rate, 0.0 < self.sample_rate <= 1.0, "in (0, 1]"),
            ("delta", self.delta, 0.0 < self.delta < 1.0, "in (0, 1)"),
            ("budget_epsilon", self.budget_epsilon, 0.0 <= self.budget_epsilon < math.inf, ">= 0 and finite"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class Reservation:
    """A written reservation: already counted as spent; commit it when the run's training is done."""

    entry_id: int
    owner: str
    run_id: str
    spent: float  # the owner's total epsilon including this reservation, at ``delta``
    delta: float  # the owner's delta: the smallest delta of its entries
    budget_epsilon: float

    @property
    def remaining(self) -> float:
        return max(self.budget_epsilon - self.spent, 0.0)


@dataclass(frozen=True)
class LedgerEntry:
    """One run's entry for one owner, as stored."""

    entry_id: int
    owner: str
    run_id: str
    coordinator: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    status: str
    created: float
    data: str = ""  # SHA-256 of the data file this entry was spent on ("" = not recorded)


@dataclass(frozen=True)
class OwnerSummary:
    """What the ledger says about one owner: the total spent and its entries."""

    owner: str
    epsilon: float
    delta: float
    reserved: int
    committed: int
    runs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["runs"] = list(self.runs)
        return out


def read_key(path: Path) -> bytes:
    """The 32-byte ledger key stored in ``path``; a clear error if it is missing or not a key."""
    try:
        return read_secret(Path(path), KEY_BYTES)
    except FileNotFoundError:
        raise LedgerError(f"no ledger key file at {path}") from None
    except OSError as exc:
        raise LedgerError(f"cannot read the ledger key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise LedgerError(f"{path} is not a ledger key: {str(exc).split(': ', 1)[-1]}") from None


def load_or_create_key(path: Path) -> bytes:
    """Read the key at ``path``, or create 32 random bytes there, readable by the owner only (0600).

    See :func:`fedmodel.fsio.load_or_create_secret` (two processes creating it at once get the same key).
    """
    path = Path(path)
    if not path.exists():
        try:
            load_or_create_secret(path, KEY_BYTES)
        except OSError as exc:
            raise LedgerError(f"cannot create the ledger key file {path}: {exc.strerror or exc}") from None
    return read_key(path)


def _epsilon(orders: tuple[float, ...], curve: np.ndarray, delta: float) -> float:
    """Opacus' RDP to (epsilon, delta) conversion over the ledger's orders."""
    return rdp.epsilon(curve, delta, orders)


@dataclass(frozen=True)
class _Curve:
    """An owner's running state: the smallest delta of its entries and the RDP vector (plain bytes)."""

    blob: bytes

    @staticmethod
    @lru_cache(maxsize=8)
    def start(orders: tuple[float, ...]) -> _Curve:
        """No entry yet: delta +inf, RDP 0 at every order (one shared object, so its bytes hash once)."""
        return _Curve(struct.pack("<d", math.inf) + bytes(8 * len(orders)))

    @property
    def delta(self) -> float:
        return float(struct.unpack_from("<d", self.blob)[0])

    @property
    def rdp(self) -> np.ndarray:
        return np.frombuffer(self.blob, dtype="<f8", offset=8)

    def add(self, request: ReservationRequest, orders: tuple[float, ...]) -> _Curve:
        after = rdp.add(self.rdp, request.noise_multiplier, request.sample_rate, request.steps, orders)
        return _Curve(struct.pack("<d", min(self.delta, request.delta)) + after.astype("<f8").tobytes())


@dataclass
class _Owner:
    """An owner's row during one write transaction."""

    key: bytes
    row_id: int | None
    curve_id: int | None
    curve: _Curve
    reserved: int = 0
    committed: int = 0
    name: str = ""


class PrivacyLedger:
    """The persistent privacy ledger of one node's owner, or of every simulated owner.

    Parameters
    ----------
    path
        The SQLite file; created (0600) if absent and ``create`` is true.
    key
        32 bytes to encrypt a new ledger with, or to open an encrypted one (see :func:`load_or_create_key`).
    create
        False to refuse a missing file (``fedmodel ledger show``).
    """

    def __init__(self, path: Path, *, key: bytes | None = None, create: bool = True) -> None:
        if key is not None and (not isinstance(key, bytes) or len(key) != KEY_BYTES):
            raise ValueError(f"key must be {KEY_BYTES} bytes")
        self.path = Path(path)
        self._lock = threading.RLock()
        self._aead: AESGCM | None = None
        self._mac_key = b""
        if key is not None:
            okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=b"fedmodel privacy ledger v1").derive(key)
            self._aead, self._mac_key = AESGCM(okm[:32]), okm[32:]
        if not self.path.exists():
            if not create:
                raise LedgerError(f"no privacy ledger at {self.path}")
            self._create_file()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60.0)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the privacy ledger at {self.path}: {exc}") from None
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------------

    def _create_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return  # another process is creating it; its schema is checked below

    def _open(self) -> None:
        with self._guard():
            self._db.execute("PRAGMA synchronous=FULL")
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            if app_id == 0 and not self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                self._initialise()
                app_id = APPLICATION_ID
            if app_id != APPLICATION_ID:
                raise LedgerError(f"{self.path} is not a fedmodel privacy ledger (an SQLite file of something else)")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise LedgerError(f"the privacy ledger at {self.path} has schema version {version}; this fedmodel "
                                  f"reads version {SCHEMA_VERSION}")
            self._db.execute("PRAGMA journal_mode=WAL")
            meta = dict(self._db.execute("SELECT name, value FROM meta"))
            self._add_data_column()
        if "orders" not in meta or "encrypted" not in meta:
            raise LedgerError(f"the privacy ledger at {self.path} is damaged: its meta table is incomplete")
        self._orders = tuple(float(a) for a in json.loads(meta["orders"]))
        self.encrypted = bytes(meta["encrypted"]) == b"1"
        self._check_key(meta.get("key-check"))

    def _initialise(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._write():
            if self._db.execute("PRAGMA application_id").fetchone()[0] != 0:
                return  # initialised by another process meanwhile
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            meta = {
                "schema": str(SCHEMA_VERSION).encode(), "accountant": ACCOUNTANT.encode(),
                "orders": json.dumps(list(rdp.default_orders())).encode(),
                "encrypted": b"1" if self._aead is not None else b"0", "created": repr(time.time()).encode(),
            }
            if self._aead is not None:
                meta["key-check"] = self._seal(_KEY_CHECK, b"key-check")
            self._db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _add_data_column(self) -> None:
        """Ledgers made before entries recorded their data file get the (nullable) column; nothing else changes."""
        if "data" in {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}:
            return
        with self._write():
            if "data" not in {row[1] for row in self._db.execute("PRAGMA table_info(entries)")}:
                self._db.execute("ALTER TABLE entries ADD COLUMN data BLOB")

    def _check_key(self, key_check: bytes | None) -> None:
        if self.encrypted and self._aead is None:
            raise LedgerError(f"the privacy ledger at {self.path} is encrypted: give its key file")
        if not self.encrypted and self._aead is not None:
            raise LedgerError(f"the privacy ledger at {self.path} is not encrypted, but a key was given")
        if self._aead is not None:
            try:
                ok = key_check is not None and (
                    self._aead.decrypt(key_check[:12], key_check[12:], b"key-check") == _KEY_CHECK)
            except InvalidTag:
                ok = False
            if not ok:
                raise LedgerError(f"the ledger at {self.path} was encrypted with a different key")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sealing ---------------------------------------------------------------------------------------------

    def _owner_key(self, owner: str) -> bytes:
        if self._aead is None:
            return owner.encode("utf-8")
        return hmac.new(self._mac_key, b"owner\x00" + owner.encode("utf-8"), hashlib.sha256).digest()

    def _seal(self, data: bytes, ad: bytes) -> bytes:
        if self._aead is None:
            return data
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, data, ad)

    def _open_sealed(self, data: bytes, ad: bytes) -> bytes:
        if self._aead is None:
            return bytes(data)
        try:
            return self._aead.decrypt(data[:12], data[12:], ad)
        except InvalidTag:
            raise LedgerError(f"the ledger at {self.path} was encrypted with a different key, or is damaged") from None

    def _digest(self, curve: _Curve) -> bytes:
        """Content address of a curve, shared by the owners with equal histories (keyed when encrypted)."""
        if self._aead is None:
            return hashlib.sha256(curve.blob).digest()
        return hmac.new(self._mac_key, b"curve\x00" + curve.blob, hashlib.sha256).digest()

    # -- transactions ----------------------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise LedgerError(f"{self.path} is not a fedmodel privacy ledger (not an SQLite database)") from None
            raise LedgerError(f"privacy ledger {self.path}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction: all of it is committed, or none."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[None]:
        with self._lock, self._guard():
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                self._db.execute("ROLLBACK")

    # -- writing ---------------------------------------------------------------------------------------------

    def reserve(self, owner: str, *, run_id: str, coordinator: str, noise_multiplier: float, sample_rate: float,
                steps: int, delta: float, budget_epsilon: float, data: str = "") -> Reservation:
        """Reserve one run's DP-SGD for ``owner`` if the owner's total stays within ``budget_epsilon``.

        The total of all the owner's entries with this one is computed at the owner's delta (the
        smallest of its entries'); above the budget, raises PrivacyBudgetExceeded and writes nothing.
        The reservation counts as spent at once. ``data`` (the SHA-256 of the data file trained on) is
        recorded with the entry: the same ledger may serve another file (a new shard draws on the same
        budget), and each entry shows which file it was spent on.
        """
        request = ReservationRequest(owner, run_id, coordinator, noise_multiplier, sample_rate, steps, delta,
                                     budget_epsilon, data)
        return self.reserve_many([request])[0]

    def reserve_many(self, requests: Sequence[ReservationRequest]) -> list[Reservation]:
        """Reserve every request in one transaction (in order; an owner may appear more than once).

        All or nothing: the first request above its owner's budget raises PrivacyBudgetExceeded and
        nothing of the batch is written.
        """
        requests = list(requests)
        for request in requests:
            if not isinstance(request, ReservationRequest):
                raise TypeError(f"expected ReservationRequest, got {type(request).__name__}")
        with self._lock, self._guard(), self._write():
            return self._reserve_in_transaction(requests)

    def _reserve_in_transaction(self, requests: list[ReservationRequest]) -> list[Reservation]:
        owners: dict[str, _Owner] = {}
        curves: dict[int, _Curve] = {}
        # (curve before, sigma, q, steps, delta) -> (curve after, epsilon): equal owners are computed once
        transitions: dict[tuple[bytes, float, float, int, float], tuple[_Curve, float]] = {}
        next_entry = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM entries").fetchone()[0]
        now = time.time()
        entries: list[tuple[int, _Owner, ReservationRequest]] = []
        out: list[Reservation] = []
        for request in requests:
            owner = owners.get(request.owner)
            if owner is None:
                owner = owners[request.owner] = self._load_owner(request.owner, curves)
            memo = (owner.curve.blob, request.noise_multiplier, request.sample_rate, request.steps, request.delta)
            if memo not in transitions:
                after = owner.curve.add(request, self._orders)
                transitions[memo] = (after, _epsilon(self._orders, after.rdp, after.delta))
            after, projected = transitions[memo]
            if projected > request.budget_epsilon:
                spent = _epsilon(self._orders, owner.curve.rdp, after.delta) if owner.curve.delta < math.inf else 0.0
                raise PrivacyBudgetExceeded(request.owner, spent, projected, request.budget_epsilon)
            owner.curve, owner.reserved = after, owner.reserved + 1
            entries.append((next_entry, owner, request))
            out.append(Reservation(next_entry, request.owner, request.run_id, projected, after.delta,
                                   request.budget_epsilon))
            next_entry += 1
        self._store_owners(list(owners.values()))
        self._db.executemany(
            "INSERT INTO entries (id, owner, status, created, run_id, coordinator, params, data) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
            ((entry_id, o.row_id, now, self._seal(r.run_id.encode(), o.key + b"\x00run_id"),
              self._seal(r.coordinator.encode(), o.key + b"\x00coordinator"),
              self._seal(_PARAMS.pack(r.noise_multiplier, r.sample_rate, r.steps, r.delta) + ACCOUNTANT.encode(),
                         o.key + b"\x00params"),
              self._seal(r.data.encode(), o.key + b"\x00data") if r.data else None)
             for entry_id, o, r in entries),
        )
        return out

    def _load_owner(self, name: str, curves: dict[int, _Curve]) -> _Owner:
        key = self._owner_key(name)
        row = self._db.execute("SELECT id, curve, reserved, committed FROM owners WHERE owner = ?", (key,)).fetchone()
        if row is None:
            return _Owner(key, None, None, _Curve.start(self._orders), name=name)
        row_id, curve_id, reserved, committed = row
        if curve_id not in curves:
            curves[curve_id] = self._read_curve(curve_id)
        return _Owner(key, row_id, curve_id, curves[curve_id], reserved, committed, name)

    def _read_curve(self, curve_id: int) -> _Curve:
        row = self._db.execute("SELECT digest, rdp FROM curves WHERE id = ?", (curve_id,)).fetchone()
        if row is None:
            raise LedgerError(f"the privacy ledger at {self.path} is damaged: curve {curve_id} is missing")
        return _Curve(self._open_sealed(row[1], b"curve\x00" + row[0]))

    def _store_owners(self, owners: list[_Owner]) -> None:
        """Point each changed owner at its new curve (shared when equal), keeping reference counts exact."""
        refs: Counter[int] = Counter()
        new_ids: dict[bytes, int] = {}
        next_curve = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM curves").fetchone()[0]
        next_owner = self._db.execute("SELECT coalesce(max(id), 0) + 1 FROM owners").fetchone()[0]
        inserts: list[tuple[int, bytes, bytes]] = []
        updates: list[tuple[int, int, int, int]] = []
        new_owners: list[tuple[int, bytes, bytes | None, int, int, int]] = []
        for owner in owners:
            digest = self._digest(owner.curve)
            curve_id = new_ids.get(digest)
            if curve_id is None:
                row = self._db.execute("SELECT id FROM curves WHERE digest = ?", (digest,)).fetchone()
                if row is None:
                    curve_id = next_curve
                    next_curve += 1
                    inserts.append((curve_id, digest, self._seal(owner.curve.blob, b"curve\x00" + digest)))
                else:
                    curve_id = row[0]
                new_ids[digest] = curve_id
            refs[curve_id] += 1
            if owner.curve_id is not None:
                refs[owner.curve_id] -= 1
            if owner.row_id is None:
                owner.row_id = next_owner
                next_owner += 1
                name = self._seal(owner.name.encode(), owner.key + b"\x00name") if self._aead is not None else None
                new_owners.append((owner.row_id, owner.key, name, curve_id, owner.reserved, owner.committed))
            else:
                updates.append((curve_id, owner.reserved, owner.committed, owner.row_id))
            owner.curve_id = curve_id
        self._db.executemany("INSERT INTO curves (id, digest, rdp, refs) VALUES (?, ?, ?, 0)", inserts)
        self._db.executemany("INSERT INTO owners VALUES (?, ?, ?, ?, ?, ?)", new_owners)
        self._db.executemany("UPDATE owners SET curve = ?, reserved = ?, committed = ? WHERE id = ?", updates)
        changed = [(n, i) for i, n in refs.items() if n]
        self._db.executemany("UPDATE curves SET refs = refs + ? WHERE id = ?", changed)
        self._db.executemany("DELETE FROM curves WHERE id = ? AND refs <= 0", [(i,) for _, i in changed])

    def commit(self, reservation: Reservation) -> None:
        """Mark a reservation committed (its run trained). Idempotent; the spent total is unchanged."""
        self.commit_many([reservation])

    def commit_many(self, reservations: Sequence[Reservation]) -> None:
        """Commit every reservation in one transaction."""
        with self._lock, self._guard(), self._write():
            for r in reservations:
                row = self._db.execute("SELECT e.status, o.id FROM entries e JOIN owners o ON o.id = e.owner "
                                       "WHERE e.id = ? AND o.owner = ?", (r.entry_id, self._owner_key(r.owner))
                                       ).fetchone()
                if row is None:
                    raise LedgerError(f"the privacy ledger at {self.path} has no reservation {r.entry_id} "
                                      f"of owner {r.owner}")
                if row[0] == 0:
                    self._db.execute("UPDATE entries SET status = 1 WHERE id = ?", (r.entry_id,))
                    self._db.execute("UPDATE owners SET reserved = reserved - 1, committed = committed + 1 "
                                     "WHERE id = ?", (row[1],))

    # -- reading ---------------------------------------------------------------------------------------------

    def spent(self, owner: str, delta: float | None = None) -> float:
        """The owner's total epsilon over all its entries, at ``delta`` (default: the owner's delta); 0 if none."""
        with self._read():
            state = self._load_owner(str(owner), {})
        if state.row_id is None:
            return 0.0
        return _epsilon(self._orders, state.curve.rdp, state.curve.delta if delta is None else delta)

    def owner_delta(self, owner: str) -> float | None:
        """The smallest delta of the owner's entries (the delta its total is reported at); None if none."""
        with self._read():
            state = self._load_owner(str(owner), {})
        return None if state.row_id is None else state.curve.delta

    def remaining(self, owner: str, budget: float, delta: float | None = None) -> float:
        """What is left of ``budget`` for the owner, never below 0."""
        return max(budget - self.spent(owner, delta), 0.0)

    def owners(self) -> list[str]:
        """Every owner with an entry, sorted."""
        with self._read():
            rows = self._db.execute("SELECT owner, name FROM owners").fetchall()
        return sorted(self._owner_name(key, name) for key, name in rows)

    def _owner_name(self, key: bytes, name: bytes | None) -> str:
        return (self._open_sealed(name, key + b"\x00name") if name is not None else bytes(key)).decode("utf-8")

    def entries(self, owner: str) -> list[LedgerEntry]:
        """The owner's entries, oldest first."""
        owner = str(owner)
        key = self._owner_key(owner)
        with self._read():
            rows = self._db.execute(
                "SELECT e.id, e.status, e.created, e.run_id, e.coordinator, e.params, e.data FROM entries e "
                "JOIN owners o ON o.id = e.owner WHERE o.owner = ? ORDER BY e.id", (key,)).fetchall()
        return [self._entry(owner, key, row) for row in rows]

    def _entry(self, owner: str, key: bytes, row: tuple[Any, ...]) -> LedgerEntry:
        entry_id, status, created, run_id, coordinator, params, data = row
        plain = self._open_sealed(params, key + b"\x00params")
        sigma, q, steps, delta = _PARAMS.unpack_from(plain)
        return LedgerEntry(entry_id, owner, self._open_sealed(run_id, key + b"\x00run_id").decode(),
                           self._open_sealed(coordinator, key + b"\x00coordinator").decode(), sigma, q, steps,
                           delta, plain[_PARAMS.size:].decode(), _STATUS[status], created,
                           "" if data is None else self._open_sealed(data, key + b"\x00data").decode())

    def history(self, owner: str) -> list[tuple[float, float, int]]:
        """The owner's (noise multiplier, sample rate, steps) in order: an Opacus accountant history."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries(owner)]

    def summary(self, owner: str | None = None) -> list[OwnerSummary]:
        """Per owner (or the one given): epsilon spent at its delta, entry counts by status, and its runs."""
        query = ("SELECT o.id, o.owner, o.name, o.curve, o.reserved, o.committed, c.digest, c.rdp FROM owners o "
                 "JOIN curves c ON c.id = o.curve")
        args: tuple[Any, ...] = ()
        if owner is not None:
            query, args = query + " WHERE o.owner = ?", (self._owner_key(str(owner)),)
        epsilons: dict[int, tuple[float, float]] = {}
        runs: dict[int, dict[str, None]] = {}
        with self._read():
            owners = self._db.execute(query, args).fetchall()
            keys = {row[0]: row[1] for row in owners}
            if owner is None:
                run_rows = self._db.execute("SELECT owner, run_id FROM entries ORDER BY id")
            else:
                run_rows = self._db.execute("SELECT owner, run_id FROM entries WHERE owner = ? ORDER BY id",
                                            (next(iter(keys), -1),))
            for owner_id, run_id in run_rows:
                run = self._open_sealed(run_id, keys[owner_id] + b"\x00run_id").decode()
                runs.setdefault(owner_id, {})[run] = None
        out = []
        for row_id, key, name, curve_id, reserved, committed, digest, blob in owners:
            if curve_id not in epsilons:
                curve = _Curve(self._open_sealed(blob, b"curve\x00" + digest))
                epsilons[curve_id] = (_epsilon(self._orders, curve.rdp, curve.delta), curve.delta)
            eps, delta = epsilons[curve_id]
            out.append(OwnerSummary(self._owner_name(key, name), eps, delta, reserved, committed,
                                    tuple(runs.get(row_id, {}))))
        return sorted(out, key=lambda s: s.owner)
