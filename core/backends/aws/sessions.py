"""Console sessions in the aws backend's table (``SessionStore`` of ``core/ports.py``; the embedded store's twin is
``core/backends/sqlite_sessions.py``): every node on the table honours a session, and a sign-out on one ends it
on all of them.

One item per session, in its own partition (so IAM's ``dynamodb:LeadingKeys`` can name them apart)::

    UISESSION#<sha256 of the cookie>   session   token_id, token_hash (the token's SHA-256), service,
                                                 created_at, ends (ISO), expires_at (TTL, epoch seconds)

Neither the cookie's value nor the token string is stored. ``ends``, not the TTL attribute, decides whether a
session is live (TTL deletes up to days late); the TTL only sweeps ended sessions away. Reads are strongly
consistent (``Table.get``), so a sign-out or a new session is seen at once by every node.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from tessera.core.access_model import SessionRecord
from tessera.core.backends.aws.calls import Table
from tessera.core.backends.aws.items import TTL_ATTRIBUTE, n, s

SESSION_PREFIX = "UISESSION#"
SESSION_SK = "session"


def session_pk(id_hash: str) -> str:
    return SESSION_PREFIX + id_hash


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class DynamoSessionStore:
    def __init__(self, db: Table) -> None:
        self.db = db

    def create_session(self, record: SessionRecord, now: datetime) -> None:
        """One ``PutItem`` (expired sessions are swept by the table's TTL, not here)."""
        item = {
            **self.db.key(session_pk(record.id_hash), SESSION_SK),
            "token_id": s(record.token_id),
            "token_hash": s(record.token_hash),
            "service": s(record.service),
            "created_at": s(_stamp(record.created_at)),
            "ends": s(_stamp(record.expires_at)),
            TTL_ATTRIBUTE: n(math.ceil(record.expires_at.timestamp())),
        }
        self.db.call("PutItem", TableName=self.db.name, Item=item)

    def get_session(self, id_hash: str) -> SessionRecord | None:
        item = self.db.get(session_pk(id_hash), SESSION_SK)
        if item is None:
            return None
        text = {name: str(item[name]["S"]) for name in ("token_id", "token_hash", "service", "created_at", "ends")}
        return SessionRecord(
            id_hash=id_hash,
            token_id=text["token_id"],
            token_hash=text["token_hash"],
            service=text["service"],
            created_at=datetime.fromisoformat(text["created_at"]),
            expires_at=datetime.fromisoformat(text["ends"]),
        )

    def delete_session(self, id_hash: str) -> None:
        self.db.call("DeleteItem", TableName=self.db.name, Key=self.db.key(session_pk(id_hash), SESSION_SK))
