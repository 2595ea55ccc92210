"""``Idempotency-Key`` claims in the embedded store's SQLite file (``core/idempotency.py``).

Shares the :class:`SQLiteStore`'s writer, so a config commit marks its claim in its own transaction
(``SQLiteStore.commit(..., guard=...)``), and so does a token's creation (``SQLiteAccessStore.create_token``).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.idempotency import COMMITTED, DONE, RUNNING, Claim, IdempotencyGuard, IdempotencyInProgress, IdempotencyRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    token_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, owner TEXT NOT NULL, state TEXT NOT NULL,
    expires_at TEXT NOT NULL, action TEXT NOT NULL, status INTEGER NOT NULL, body BLOB, change TEXT,
    PRIMARY KEY (token_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at);
"""
COLUMNS = "token_id, key, fingerprint, owner, state, expires_at, action, status, body, change"
SWEEP_EVERY = 1000  # claims between removals of expired records


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(row: tuple) -> IdempotencyRecord:
    change = tuple(row[9].split("\x00")) if row[9] else None
    return IdempotencyRecord(
        token_id=row[0], key=row[1], fingerprint=row[2], owner=row[3], state=row[4],
        expires_at=datetime.fromisoformat(row[5]), action=row[6], status=row[7], body=bytes(row[8] or b""), change=change,
    )  # fmt: skip


def mark_committed(db: sqlite3.Connection, guard: IdempotencyGuard, change: tuple[str, ...], expires_at: datetime) -> None:
    """Inside a commit's transaction: the claim becomes "committed" (with what it changed), or the whole commit
    fails because the claim is no longer this request's (its lease ran out and a retry took it over)."""
    cursor = db.execute(
        "UPDATE idempotency SET state = ?, change = ?, expires_at = ? WHERE token_id = ? AND key = ? AND owner = ? AND state = ?",
        (COMMITTED, "\x00".join(change), _stamp(expires_at), guard.token_id, guard.key, guard.owner, RUNNING),
    )
    if cursor.rowcount != 1:
        raise IdempotencyInProgress("this request's Idempotency-Key was taken over by a retry; nothing was changed")


class SQLiteIdempotencyStore:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._claims = 0
        with store.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        store.idempotency_marker = mark_committed

    def claim(self, record: IdempotencyRecord, now: datetime) -> Claim:
        with self.store.transaction() as db:
            self._claims += 1
            if self._claims % SWEEP_EVERY == 0:
                db.execute("DELETE FROM idempotency WHERE expires_at < ?", (_stamp(now),))
            row = db.execute(f"SELECT {COLUMNS} FROM idempotency WHERE token_id = ? AND key = ?", (record.token_id, record.key)).fetchone()
            if row is not None:
                found = _record(row)
                if found.expires_at > now:
                    return Claim(False, found)
                # An expired window, or a lease that ran out (its node died or paused before committing): ours now.
            db.execute(
                f"INSERT INTO idempotency ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL) "
                "ON CONFLICT (token_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, owner = excluded.owner, "
                "state = excluded.state, expires_at = excluded.expires_at, action = excluded.action, status = 0, "
                "body = NULL, change = NULL",
                (record.token_id, record.key, record.fingerprint, record.owner, RUNNING, _stamp(record.expires_at), record.action),
            )
        return Claim(True)

    def finish(self, guard: IdempotencyGuard, status: int, body: bytes, expires_at: datetime) -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE idempotency SET state = ?, status = ?, body = ?, expires_at = ? "
                "WHERE token_id = ? AND key = ? AND owner = ? AND state IN (?, ?)",
                (DONE, status, body, _stamp(expires_at), guard.token_id, guard.key, guard.owner, RUNNING, COMMITTED),
            )

    def release(self, guard: IdempotencyGuard) -> None:
        with self.store.transaction() as db:
            db.execute(
                "DELETE FROM idempotency WHERE token_id = ? AND key = ? AND owner = ? AND state = ?",
                (guard.token_id, guard.key, guard.owner, RUNNING),
            )
