"""In-memory tokens, policies and audit log: for unit tests and as a stand-in where no durable
implementation exists for a store (a warning says so at start). Same semantics as the SQLite one."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, TokenRecord
from tessera.core.audit import GENESIS, RESPONSE, link


class MemoryAccessStore:
    chain_name = "main"
    durable_appends = True  # as durable as memory gets

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tokens: dict[str, TokenRecord] = {}
        self.policies: dict[str, PolicyDoc] = {}
        self.entries: dict[str, list[AuditEntry]] = {}
        self.heads: dict[str, tuple[int, str]] = {}
        self._policy_version = 0

    def create_token(self, record: TokenRecord) -> None:
        with self._lock:
            self.tokens[record.id] = record

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        with self._lock:
            return next((t for t in self.tokens.values() if t.token_hash == token_hash), None)

    def get_token(self, token_id: str) -> TokenRecord | None:
        return self.tokens.get(token_id)

    def list_tokens(self) -> list[TokenRecord]:
        with self._lock:
            return sorted((t for t in self.tokens.values() if t.revoked_at is None), key=lambda t: (t.created_at, t.id))

    def revoke_token(self, token_id: str, when: datetime) -> bool:
        with self._lock:
            record = self.tokens.get(token_id)
            if record is None or record.revoked_at is not None:
                return False
            self.tokens[token_id] = replace(record, revoked_at=when)
            return True

    def put_policy(self, name: str, rules: tuple[Rule, ...], when: datetime) -> PolicyDoc:
        with self._lock:
            self._policy_version += 1
            doc = PolicyDoc(name, rules, self._policy_version, when)
            self.policies[name] = doc
            return doc

    def get_policy(self, name: str) -> PolicyDoc | None:
        return self.policies.get(name)

    def list_policies(self) -> list[PolicyDoc]:
        with self._lock:
            return [self.policies[name] for name in sorted(self.policies)]

    def delete_policy(self, name: str) -> bool:
        with self._lock:
            return self.policies.pop(name, None) is not None

    def append(self, chain: str, entries: list[AuditEntry]) -> list[AuditEntry]:
        with self._lock:
            last_seq, last_hash = self.heads.get(chain, (0, GENESIS))
            linked = link(chain, entries, last_seq, last_hash)
            self.entries.setdefault(chain, []).extend(linked)
            if linked:
                self.heads[chain] = (linked[-1].seq, linked[-1].hash)
            return linked

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = RESPONSE
    ) -> list[AuditEntry]:
        with self._lock:
            found = [
                e
                for chain in self.entries.values()
                for e in chain
                if (phase is None or e.phase == phase)
                and (key is None or e.key == key) and (service is None or e.service == service) and (since is None or e.ts >= since)
            ]
        found.sort(key=lambda e: (e.ts, e.seq), reverse=True)
        return found[:limit]

    def chains(self) -> dict[str, tuple[int, str]]:
        return dict(self.heads)

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        with self._lock:
            return [e for e in self.entries.get(chain, []) if e.seq > after_seq][:limit]
