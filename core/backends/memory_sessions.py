"""Console sessions in memory (``SessionStore`` of ``core/ports.py``): for tests, and for stores without a shared
session table yet (the aws backend), where a session is known only to the process that opened it."""

from __future__ import annotations

import threading
from datetime import datetime

from tessera.core.sessions import SessionRecord


class MemorySessionStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionRecord] = {}

    def create_session(self, record: SessionRecord, now: datetime) -> None:
        with self._lock:
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires_at > now}
            self._sessions[record.id_hash] = record

    def get_session(self, id_hash: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(id_hash)

    def delete_session(self, id_hash: str) -> None:
        with self._lock:
            self._sessions.pop(id_hash, None)
