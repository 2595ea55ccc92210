"""Console sessions in the embedded backend's SQLite file (``SessionStore`` of ``core/ports.py``): every worker
process on the data directory sees the same sessions, and a sign-out anywhere ends the session everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

from tessera.core.backends.sqlite import SQLiteStore
from tessera.core.sessions import SessionRecord

SESSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS ui_sessions (
    id_hash TEXT PRIMARY KEY, token_id TEXT NOT NULL, token_hash TEXT NOT NULL, service TEXT NOT NULL,
    created_at TEXT NOT NULL, expires_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ui_sessions_by_expiry ON ui_sessions (expires_at);
"""
COLUMNS = "id_hash, token_id, token_hash, service, created_at, expires_at"


def _stamp(moment: datetime) -> str:
    """Fixed-width UTC text: text order is time order (the expiry index relies on it)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SQLiteSessionStore:
    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        with store.transaction() as db:
            for statement in SESSIONS_SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def create_session(self, record: SessionRecord, now: datetime) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM ui_sessions WHERE expires_at <= ?", (_stamp(now),))
            db.execute(
                f"INSERT INTO ui_sessions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id_hash,
                    record.token_id,
                    record.token_hash,
                    record.service,
                    _stamp(record.created_at),
                    _stamp(record.expires_at),
                ),
            )

    def get_session(self, id_hash: str) -> SessionRecord | None:
        rows = self.store._query(f"SELECT {COLUMNS} FROM ui_sessions WHERE id_hash = ?", (id_hash,))
        if not rows:
            return None
        row = rows[0]
        return SessionRecord(row[0], row[1], row[2], row[3], datetime.fromisoformat(row[4]), datetime.fromisoformat(row[5]))

    def delete_session(self, id_hash: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (id_hash,))
