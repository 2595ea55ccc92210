"""The small Protocols every adapter implements. Fakes satisfy them without inheriting anything."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tessera.core.access_model import AuditEntry, PolicyDoc, Rule, SessionRecord, TokenRecord
from tessera.core.idempotency import Claim, IdempotencyGuard, IdempotencyRecord
from tessera.core.model import Change, Environment, Scope, Version


class VersionStore(Protocol):
    """Versions of keys, the store-wide revision counter and the change log, committed together.

    ``commit`` is the only write of config state. It succeeds only if the key's latest version is
    ``version.version - 1`` (0: no version yet) and, for a live write, no live key is an ancestor or a
    descendant of ``version.key`` in its scope; it then stores the version, moves the head, takes the
    next revision and appends the change-log entry in one atomic step, and returns the version with its
    ``revision`` set. Otherwise it raises ``VersionConflict`` (``current_version``) or ``KeyConflict`` and
    changes nothing.
    """

    backend_name: str

    def latest(self, scope: Scope, key: str) -> Version | None: ...

    def get_version(self, scope: Scope, key: str, version: int) -> Version | None: ...

    def load_envelope(self, version: Version) -> bytes: ...

    def commit(self, version: Version, audit: AuditEntry | None = None, guard: IdempotencyGuard | None = None) -> Version:
        """Atomically: check the head is ``version.version - 1``, store the version, move the head, take the next
        revision, append the change-log entry — and, when ``audit`` is given (stores with ``audit_in_commit``),
        append that audit record to the store's audit chain in the same step, so it is durable with the change;
        when ``guard`` is given (stores with ``idempotency``), mark that ``Idempotency-Key`` claim committed in the
        same step, or commit nothing (``IdempotencyInProgress``) if the claim is no longer the guard's owner's."""
        ...

    def history(self, scope: Scope, key: str, limit: int, before: int | None) -> list[Version]: ...

    def list_latest(self, scope: Scope, prefix: str) -> list[Version]:
        """Latest live versions of every key equal to or below ``prefix`` (whole segments), sorted by key."""
        ...

    def current_revision(self) -> int: ...

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        """Change-log entries with a revision above ``revision``, in revision order."""
        ...

    def oldest_retained_revision(self) -> int:
        """Lowest revision still in the change log (``current_revision() + 1`` when it is empty)."""
        ...

    def list_envs(self) -> list[Environment]: ...

    def put_env(self, env: Environment) -> bool:
        """Create or re-parent; True when created."""
        ...

    def get_meta(self, name: str) -> str | None: ...

    def put_meta(self, name: str, value: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class DataKey:
    key_id: str
    plaintext: bytes
    wrapped: bytes

    def __repr__(self) -> str:  # never print key material
        return f"DataKey(key_id={self.key_id!r})"


class KeyService(Protocol):
    """Makes and unwraps per-write data keys: AWS KMS, or the local keyring."""

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey: ...

    def decrypt_data_key(self, key_id: str, wrapped: bytes, context: Mapping[str, str]) -> bytes: ...


class RewrapStore(Protocol):
    """What key rotation needs from a store: walk every sealed version, and swap one envelope for its re-wrap.

    ``replace_envelope`` is conditional: it changes nothing (and returns False) unless the stored envelope is
    still ``old``, so a rewrap can race with nothing and can be interrupted and resumed at any point.
    """

    def iter_sealed_versions(self, after: tuple[str, str, str, int] | None, limit: int) -> list[Version]:
        """Versions holding an envelope, ordered by (namespace, env, key, version), strictly after ``after``."""
        ...

    def replace_envelope(self, version: Version, old: bytes, new: bytes, new_key_id: str) -> bool: ...

    def versions_by_key_id(self) -> dict[str, int]:
        """How many stored versions each master key id protects."""
        ...


# ---------------------------------------------------------------------- access control and audit (issue 5)
# The records live in ``core/access_model.py``; these Protocols are what a backend implements for them.


class TokenStore(Protocol):
    """Service tokens, stored by the SHA-256 of their string (never the string)."""

    def create_token(self, record: TokenRecord) -> None: ...

    def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    def get_token(self, token_id: str) -> TokenRecord | None: ...

    def list_tokens(self) -> list[TokenRecord]:
        """Every token not revoked, expired ones included, oldest first."""
        ...

    def revoke_token(self, token_id: str, when: datetime) -> bool:
        """True when a live token was revoked; False when there is no such token (or it was already revoked)."""
        ...


class PolicyStore(Protocol):
    def put_policy(self, name: str, rules: tuple[Rule, ...], when: datetime) -> PolicyDoc:
        """Create or replace; the stored version goes up by one. Returns the stored document."""
        ...

    def get_policy(self, name: str) -> PolicyDoc | None: ...

    def list_policies(self) -> list[PolicyDoc]: ...

    def delete_policy(self, name: str) -> bool: ...


class AuditStore(Protocol):
    """Hash-chained audit entries (scheme: ``core/audit.py``).

    ``append`` links ``entries`` (in order) to the end of ``chain`` and stores them durably in one atomic
    step, or raises ``Unavailable`` and stores none of them. It returns the entries with chain, seq,
    prev_hash and hash set. A store that shards its log itself (DynamoDB: the shard this process holds) picks
    the chain and says so with ``chain_name = None``; callers pass the store's ``chain_name``.
    """

    def append(self, chain: str | None, entries: list[AuditEntry]) -> list[AuditEntry]: ...

    def query(
        self, key: str | None, service: str | None, since: datetime | None, limit: int, phase: str | None = "response"
    ) -> list[AuditEntry]:
        """Newest first; ``phase`` "response" (one entry per request), "request" (pre-entries), or None for both."""
        ...

    def chains(self) -> dict[str, tuple[int, str]]:
        """Each chain's recorded head: chain → (seq, hash) of its last entry."""
        ...

    def chain_entries(self, chain: str, after_seq: int, limit: int) -> list[AuditEntry]:
        """A chain's entries in stored order (by seq), with seq above ``after_seq``."""
        ...


class IdempotencyStore(Protocol):
    """``Idempotency-Key`` claims (``core/idempotency.py``), in the replicated store."""

    def claim(self, record: IdempotencyRecord, now: datetime) -> Claim:
        """Store ``record`` (state running) unless (token, key) holds a record whose lease or window has not
        expired; returns ``Claim(ours=True)`` or the record found."""
        ...

    def finish(self, guard: IdempotencyGuard, status: int, body: bytes, expires_at: datetime) -> None:
        """Keep the response of the guard's claim for replays (only while the claim is the guard's)."""
        ...

    def release(self, guard: IdempotencyGuard) -> None:
        """Drop the guard's claim if it is still running (the request changed nothing): a retry may run."""
        ...


class ChangeAuditor(Protocol):
    """How a request's audit record rides along with the commit it causes (``ConfigService`` asks; the HTTP
    layer answers with what it knows of the request: who, which request id, from where)."""

    def entry_for(self, version: Version) -> AuditEntry | None:
        """The record to write in the commit of ``version`` (None: none in this commit)."""
        ...

    def recorded(self, entry: AuditEntry) -> None:
        """The commit holding ``entry`` succeeded: the record is durable."""
        ...

    @property
    def guard(self) -> IdempotencyGuard | None:
        """The request's ``Idempotency-Key`` claim, which its commit must mark (None: no key sent)."""
        ...


class SessionStore(Protocol):
    """Console sessions (``core/sessions.py``), by the SHA-256 of the cookie's value (never the value), in the
    store every worker and node shares."""

    def create_session(self, record: SessionRecord, now: datetime) -> None:
        """Store ``record``; sessions expired before ``now`` may be swept (SQLite here; DynamoDB by its TTL)."""
        ...

    def get_session(self, id_hash: str) -> SessionRecord | None: ...

    def delete_session(self, id_hash: str) -> None: ...
