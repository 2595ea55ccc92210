"""``Idempotency-Key``: a retried write applies once (API.md, Conventions).

A request carrying ``Idempotency-Key: K`` first *claims* (token, K) in the replicated store, with a fingerprint
of the request (method, path, query, body; keyed by the bearer token, so it reveals nothing of a secret value in
the body) and a random owner id, for a lease. Then:

- nothing there (or an expired lease): the claim is ours and the request runs;
- a claim still running: ``409 idempotency_in_progress`` (the first may yet commit);
- a finished claim with the same fingerprint: its stored response again, ``Idempotent-Replayed: true``;
- the same key with a different request: ``422 idempotency_key_reused``.

A change the request commits carries an :class:`IdempotencyGuard` into its commit: the store marks the claim
"committed" **in the same transaction**, conditioned on the claim still being ours. So a node that paused past its
lease (its claim taken over by a retry on another node) cannot commit when it wakes — the write applies once —
and a node killed after its commit but before storing the response leaves a committed claim from which the
response is rebuilt. A request that failed without changing anything releases its claim so a retry can run.

>>> fingerprint("PUT", "/config/a.b", b"", b'{"value": 1}') == fingerprint("PUT", "/config/a.b", b"", b'{"value": 1}')
True
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from tessera.core.errors import InvalidRequest, TesseraError
from tessera.core.model import Version

KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,200}\Z")
LEASE = timedelta(seconds=60)  # longer than any request may run before its commit point
RETENTION = timedelta(hours=24)  # the contract's window for replays
RUNNING, COMMITTED, DONE = "running", "committed", "done"


class IdempotencyInProgress(TesseraError):
    code, status = "idempotency_in_progress", 409


class IdempotencyKeyReused(TesseraError):
    code, status = "idempotency_key_reused", 422


def parse_idempotency_key(raw: str) -> str:
    if not KEY_PATTERN.match(raw):
        raise InvalidRequest("Idempotency-Key must be 1 to 200 visible ASCII characters")
    return raw


def fingerprint(method: str, path: str, query: bytes, body: bytes, secret: bytes = b"") -> str:
    """HMAC-SHA256 of the request keyed by ``secret``, the caller's bearer token: the body may hold a secret value,
    and a plain hash of it kept in the store could be guessed offline (a short password, say) by whoever reads the
    store; keyed by a token only its holder knows (the store keeps only the token's digest), it cannot."""
    digest = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def change_of(version: Version) -> tuple[str, ...]:
    """What a committed claim records of its config change, to rebuild the response (``handlers/idempotency.rebuilt``)."""
    scope = version.scope
    return ("config", scope.namespace, scope.env, version.key, str(version.version), version.action.value)


@dataclass(frozen=True)
class IdempotencyGuard:
    """What a commit must check and mark: the claim (token, key) is still ``owner``'s."""

    token_id: str
    key: str
    owner: str


@dataclass(frozen=True)
class IdempotencyRecord:
    token_id: str
    key: str
    fingerprint: str
    owner: str
    state: str  # running | committed | done
    expires_at: datetime  # the lease while running; the 24 h window once committed or done
    action: str = ""  # the route (its audit action): how to rebuild a committed claim's response
    status: int = 0
    body: bytes = b""
    # what a committed claim's change was ("config" namespace env key version, or "token" id), to rebuild its
    # response when the node died between the commit and storing the response
    change: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming: ``ours`` (run the request), or the record found (running, committed, done)."""

    ours: bool
    record: IdempotencyRecord | None = None
