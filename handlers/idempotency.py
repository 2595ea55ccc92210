"""``Idempotency-Key`` at the HTTP edge: claim, then run (or replay, or refuse); see ``core/idempotency.py``.

Used by the ASGI front for ``PUT``, ``DELETE`` and ``POST`` requests that carry the header, on stores that keep
claims. The request body is read first (at most 1 MiB, as any body) to fingerprint the request, then handed to
the route unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from tessera.core.errors import TesseraError
from tessera.core.idempotency import (
    COMMITTED,
    DONE,
    LEASE,
    RETENTION,
    IdempotencyGuard,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    IdempotencyRecord,
    fingerprint,
)
from tessera.core.model import Scope, utcnow
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import asgi_body, collect_body
from tessera.handlers.render import JSON, dumps, write_body

REPLAYED = (b"idempotent-replayed", b"true")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def read_body(receive: Receive) -> bytes:
    """The whole request body (``PayloadTooLarge`` past 1 MiB)."""
    return bytes(await collect_body(None, asgi_body(receive)))


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the route the body already read, then whatever the connection says next."""
    sent = False

    async def again() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def new_claim(token_id: str, key: str, scope: Mapping[str, Any], body: bytes, action: str, token: str | None = None) -> IdempotencyRecord:
    """The claim of this request: ``token`` (the bearer token's string) keys the fingerprint (``core/idempotency.py``)."""
    return IdempotencyRecord(
        token_id=token_id,
        key=key,
        fingerprint=fingerprint(scope["method"], scope["path"], scope.get("query_string", b""), body, (token or "").encode()),
        owner=os.urandom(12).hex(),
        state="running",
        expires_at=utcnow() + LEASE,
        action=action,
    )


def answer_for(
    found: IdempotencyRecord, asked: IdempotencyRecord, store: Any, tokens: Any = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The answer to a retry that found ``found``: the first response again, or the refusal."""
    if found.fingerprint != asked.fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
    if found.state == DONE:
        return found.status, [JSON, REPLAYED], found.body
    if found.state == COMMITTED and found.change is not None:
        return rebuilt(found.change, store, tokens)
    raise IdempotencyInProgress("a request with this Idempotency-Key is still running; retry shortly")


def rebuilt(change: tuple[str, ...], store: Any, tokens: Any = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The response of a change that committed but whose response was never stored (its node died right after)."""
    if change[0] == "token":
        from tessera.handlers.auth import token_body

        record = tokens.get_token(change[1]) if tokens is not None else None
        if record is None:
            raise TesseraError("the token this Idempotency-Key guarded cannot be read back")
        return 201, [JSON, REPLAYED], dumps(token_body(record))  # never the token string: it was shown once
    kind, namespace, env, key, number, action = change
    version = store.get_version(Scope(namespace, env), key, int(number))
    if version is None:
        raise TesseraError("the change this Idempotency-Key guarded cannot be read back")
    if action == "delete":
        body: dict[str, Any] = {"key": version.key, "version": version.version, "revision": version.revision}
    else:
        body = write_body(version)
        if action == "rollback":
            body["rolled_back_from"] = version.rolled_back_from
    return (201 if action == "create" else 200), [JSON, REPLAYED], dumps(body)


def kept_body(action: str, body: bytes) -> bytes:
    """What is kept for replays: a created token's string is shown once only, never again."""
    if action != "token.create":
        return body
    import json

    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        parsed.pop("token", None)
    return dumps(parsed)


def finish_or_release(store: Any, guard: IdempotencyGuard, auditor: Auditor, status: int, body: bytes) -> None:
    """After the route answered: keep a final response for replays; release the claim of one that may be retried
    (a server error or a refusal to come back later), unless it committed (then it stays committed)."""
    if status >= 500 or status == 429:
        store.release(guard)
    else:
        store.finish(guard, status, kept_body(auditor.action or "", body), utcnow() + RETENTION)

