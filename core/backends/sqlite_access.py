"""Tokens, policies and the audit log in the embedded backend's SQLite file.

Shares the :class:`SQLiteStore`'s writer connection and transaction (one writer lock, one fsync per
commit) and its per-thread reader connections. Implements ``TokenStore``, ``PolicyStore`` and
``AuditStore`` of ``core/ports.py``.

The audit append reads the chain head, links the batch and moves the head inside one ``BEGIN IMMEDIATE``
transaction, so every process writing to the same file extends one unforked chain (``core/audit.py``).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import GENESIS, RESPONSE, link
from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.idempotency import RETENTION, IdempotencyGuard

ACCESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, service TEXT NOT NULL, policies TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY, rules TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL
) WITHOUT ROWID;
-- (name, version) without reading the rules (a big rules column would be read through to reach version)
CREATE INDEX IF NOT EXISTS policies_versions ON policies (name, version);
CREATE TABLE IF NOT EXISTS audit (
    chain TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT NOT NULL, request_id TEXT NOT NULL,
    service TEXT, token_id TEXT, action TEXT NOT NULL, namespace TEXT, env TEXT, key TEXT, version INTEGER,
    outcome TEXT NOT NULL, status INTEGER NOT NULL, target TEXT, client TEXT, method TEXT, path TEXT,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, phase TEXT,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_by_key ON audit (key, ts);
CREATE INDEX IF NOT EXISTS audit_by_service ON audit (service, ts);
CREATE TABLE IF NOT EXISTS audit_heads (chain TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    chain TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL, removed INTEGER NOT NULL, at TEXT NOT NULL
) WITHOUT ROWID;
"""
PRUNE_BATCH = 5000  # rows deleted per transaction: the writer lock is never held long

AUDIT_COLUMNS = (
    "chain, seq, ts, request_id, service, token_id, action, namespace, env, key, version, outcome, status, "
    "target, client, method, path, prev_hash, hash, phase"
)
TOKEN_COLUMNS = "id, service, policies, token_hash, created_at, expires_at, revoked_at"


def _stamp(moment: datetime | None) -> str | None:
    """Fixed-width UTC text, so that text order is time order in indexes."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _token(row: tuple) -> TokenRecord:
    return TokenRecord(
        id=row[0],
        service=row[1],
        policies=tuple(json.loads(row[2])),
        token_hash=row[3],
        created_at=datetime.fromisoformat(row[4]),
        expires_at=_moment(row[5]),
        revoked_at=_moment(row[6]),
    )


def _audit(row: tuple) -> AuditEntry:
    return AuditEntry(
        chain=row[0], seq=row[1], ts=datetime.fromisoformat(row[2]), request_id=row[3], service=row[4],
        token_id=row[5], action=row[6], namespace=row[7], env=row[8], key=row[9], version=row[10],
        outcome=row[11], status=row[12], target=row[13], client=row[14], method=row[15], path=row[16],
        prev_hash=row[17], hash=row[18], phase=row[19] or RESPONSE,
    )  # fmt: skip


def _policy(row: tuple) -> PolicyDoc:
    rules = tuple(Rule.from_dict(raw) for raw in json.loads(row[1]))
    return PolicyDoc(name=row[0], rules=rules, version=row[2], updated_at=datetime.fromisoformat(row[3]))


class SQLiteAccessStore:
    chain_name = "main"  # one chain per file: every process on this data directory extends it

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        with store.transaction() as db:
            for statement in ACCESS_SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
            if "phase" not in columns:  # a file from before request entries: NULL is "response"
                db.execute("ALTER TABLE audit ADD COLUMN phase TEXT")
        # Records of changes are written inside the commit's own transaction (durable with the change).
        store.audit_appender = lambda db, entries: self._append_in(db, self.chain_name, entries)
        store.audit_in_commit = True

    # ------------------------------------------------------------------ tokens
    idempotency = True  # create_token marks an Idempotency-Key claim in its own transaction

    def create_token(self, record: TokenRecord, guard: IdempotencyGuard | None = None) -> None:
        with self.store.transaction() as db:
            if guard is not None and self.store.idempotency_marker is not None:
                self.store.idempotency_marker(db, guard, ("token", record.id), record.created_at + RETENTION)
            db.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id, record.service, json.dumps(list(record.policies)), record.token_hash,
                    _stamp(record.created_at), _stamp(record.expires_at), _stamp(record.revoked_at),
                ),
            )  # fmt: skip

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        rows = self.store._query(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(rows[0]) if rows else None

    def get_token(self, token_id: str) -> TokenRecord | None:
        rows = self.store._query(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,))
        return _token(rows[0]) if rows else None

    def list_tokens(self) -> list[TokenRecord]:
        rows = self.store._query(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE revoked_at IS NULL ORDER BY created_at, id")
        return [_token(row) for row in rows]

    def revoke_token(self, token_id: str, when: datetime) -> bool:
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (_stamp(when), token_id)
            )
            return cursor.rowcount == 1

    # ------------------------------------------------------------------ policies
    def put_policy(self, name: str, rules: tuple[Rule, ...], when: datetime) -> PolicyDoc:
        body = json.dumps([rule.to_dict() for rule in rules])
        with self.store.transaction() as db:
            # Versions come from one counter, so a policy deleted and created again never reuses a
            # version number (nodes cache compiled policies by (name, version)).
            version = db.execute(
                "INSERT INTO counters (name, value) VALUES ('policy_version', 1) "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()[0]
            db.execute(
                "INSERT INTO policies (name, rules, version, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET rules = excluded.rules, version = excluded.version, "
                "updated_at = excluded.updated_at",
                (name, body, version, _stamp(when)),
            )
        return PolicyDoc(name, rules, version, when)

    def get_policy(self, name: str) -> PolicyDoc | None:
        rows = self.store._query("SELECT name, rules, version, updated_at FROM policies WHERE name = ?", (name,))
        return _policy(rows[0]) if rows else None

    def list_policies(self) -> list[PolicyDoc]:
        rows = self.store._query("SELECT name, rules, version, updated_at FROM policies ORDER BY name")
        return [_policy(row) for row in rows]

    def policy_versions(self) -> dict[str, int]:
        """Every policy's name and version, without its rules: what a node compares before reloading any."""
        return dict(self.store._query("SELECT name, version FROM policies"))

    def delete_policy(self, name: str) -> bool:
        with self.store.transaction() as db:
            return db.execute("DELETE FROM policies WHERE name = ?", (name,)).rowcount == 1

    # ------------------------------------------------------------------ audit
    def append(self, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Written to the file without an fsync: :meth:`flush` (or the next durable commit) makes it durable."""
        if not entries:
            return []
        with self.store.transaction(durable=False) as db:
            return self._append_in(db, chain, entries)

    def flush(self) -> None:
        """Make every record appended so far durable: a tiny commit with ``synchronous=FULL`` fsyncs the WAL,
        which holds those records' frames before it."""
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('audit_flushed_at', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (_stamp(datetime.now(UTC)),),
            )

    @staticmethod
    def _append_in(db: sqlite3.Connection, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Link ``entries`` to the chain's head and insert them, inside the caller's transaction."""
        head = db.execute("SELECT seq, hash FROM audit_heads WHERE chain = ?", (chain,)).fetchone()
        last_seq, last_hash = (head[0], head[1]) if head else (0, GENESIS)
        linked = link(chain, entries, last_seq, last_hash)
        db.executemany(
            f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({', '.join('?' * 20)})",
            [
                (
                    e.chain, e.seq, _stamp(e.ts), e.request_id, e.service, e.token_id, e.action, e.namespace,
                    e.env, e.key, e.version, e.outcome, e.status, e.target, e.client, e.method, e.path,
                    e.prev_hash, e.hash, None if e.phase == RESPONSE else e.phase,
                )
                for e in linked
            ],
        )  # fmt: skip
        db.execute(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES (?, ?, ?) "
            "ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (chain, linked[-1].seq, linked[-1].hash),
        )
        return linked

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        """Newest first; ``phase`` "response" (the default: one entry per request), "request", or None for both."""
        where: list[str] = []
        params: list[str | None] = []
        if phase == RESPONSE:
            where.append("phase IS NULL")
        elif phase is not None:
            where.append("phase = ?")
            params.append(phase)
        if key is not None:
            where.append("key = ?")
            params.append(key)
        if service is not None:
            where.append("service = ?")
            params.append(service)
        if since is not None:
            where.append("ts >= ?")
            params.append(_stamp(since))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.store._query(
            f"SELECT {AUDIT_COLUMNS} FROM audit {clause} ORDER BY ts DESC, seq DESC LIMIT ?", (*params, limit)
        )
        return [_audit(row) for row in rows]

    def chains(self) -> dict[str, tuple[int, str]]:
        return {chain: (seq, digest) for chain, seq, digest in self.store._query("SELECT chain, seq, hash FROM audit_heads")}

    # ------------------------------------------------------------------ retention
    def chain_starts(self) -> dict[str, tuple[int, str]]:
        """Each chain's last removed entry (seq, hash): where ``verify`` starts."""
        return {chain: (seq, digest) for chain, seq, digest in self.store._query("SELECT chain, seq, hash FROM audit_checkpoints")}

    def prune(self, older_than: datetime, batch: int = PRUNE_BATCH) -> int:
        """Remove each chain's oldest records written before ``older_than``, leaving a checkpoint (the last removed
        record's seq and hash, and how many were removed in all); returns how many were removed. Records go in
        chain order only (a record is kept while one before it must be), in transactions of ``batch``."""
        removed = 0
        cutoff = _stamp(older_than)
        for chain in self.chains():
            while True:
                with self.store.transaction() as db:
                    low = db.execute("SELECT MIN(seq) FROM audit WHERE chain = ?", (chain,)).fetchone()[0]
                    head = db.execute("SELECT seq FROM audit_heads WHERE chain = ?", (chain,)).fetchone()
                    if low is None or head is None:
                        break
                    high = min(low + batch - 1, head[0] - 1)  # the newest record always stays: the head is checked against it
                    newer = db.execute(
                        "SELECT MIN(seq) FROM audit WHERE chain = ? AND seq BETWEEN ? AND ? AND ts >= ?", (chain, low, high, cutoff)
                    ).fetchone()[0]
                    boundary = high if newer is None else newer - 1
                    if boundary < low:
                        break
                    last_hash = db.execute("SELECT hash FROM audit WHERE chain = ? AND seq = ?", (chain, boundary)).fetchone()[0]
                    deleted = db.execute("DELETE FROM audit WHERE chain = ? AND seq <= ?", (chain, boundary)).rowcount
                    db.execute(
                        "INSERT INTO audit_checkpoints (chain, seq, hash, removed, at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (chain) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                        "removed = audit_checkpoints.removed + excluded.removed, at = excluded.at",
                        (chain, boundary, last_hash, deleted, _stamp(datetime.now(UTC))),
                    )
                removed += deleted
                if boundary < high or deleted < batch:
                    break
        return removed

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        rows = self.store._query(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE chain = ? AND seq > ? ORDER BY seq LIMIT ?", (chain, after_seq, limit)
        )
        return [_audit(row) for row in rows]


__all__ = ["SQLiteAccessStore"]
