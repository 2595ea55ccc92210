"""The audit middleware: one audit entry per request to the audited routes, fail-closed, plus damping.

A pure ASGI middleware (no ``BaseHTTPMiddleware``): it lets the route run, holds back the response's
start message, and only when the first body chunk is ready — before any byte reaches the client — builds
the entry from what happened (status, principal, scope, key, version), hands it to the group-committing
audit log and waits until its batch is durable. If that fails the client gets ``503 unavailable``
instead, and the held response is dropped: nothing is served that the audit log does not know about.

A *mutating* request (any method but GET/HEAD/OPTIONS) first gets a ``phase="request"`` entry
(``outcome="attempt"``), durable before the route runs; if it cannot be written the route does not run and
the client gets ``503``. So a committed change always has a record, even when its outcome entry then fails
(that answer is a ``503`` saying the outcome is unknown). Reads stay at one entry per request.

Every wait for the audit log is shielded (cancelling a request never cancels its entry, which is still
written) and bounded by ``AUDIT_WAIT_SECONDS`` (then ``503``, as for a failed write).

It also turns a ``401`` into ``429 rate_limited`` for an address under brute-force penalty (``core/damping.py``);
failed WebSocket authentications count too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from starlette.datastructures import Headers

from tessera.core.access_model import AuditEntry
from tessera.core.audit import ATTEMPT, REQUEST
from tessera.core.errors import TesseraError, Unauthenticated
from tessera.core.model import Principal, Scope, utcnow
from tessera.handlers.deps import parse_bearer

logger = logging.getLogger("tessera.audit")
AUDITED_PREFIXES = ("/config", "/watch", "/ws", "/policies", "/auth", "/envs", "/diff", "/audit")
MAX_FIELD = 256  # audit fields taken from the URL are cut here (they are not validated when the request is refused)
VERSION_BODY_LIMIT = 256 * 1024
AUDIT_WAIT_SECONDS = 10.0  # longest wait for an entry to be durable before answering 503
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
AUTH_ACTIONS = frozenset({"self", "explain"})  # /auth/<these>; tokens are classified above, the rest is auth.unknown


def audited(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in AUDITED_PREFIXES)


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_FIELD]


def classify(method: str, path: str) -> tuple[str, str | None, str | None]:
    """(action, key, target) of a request: ``PUT /config/a.b`` → ``("config.write", "a.b", None)``."""
    parts = path.strip("/").split("/", 2)
    head = parts[0]
    rest = unquote(path.strip("/")[len(head) + 1 :]) if len(parts) > 1 else ""
    if head == "config":
        if rest == "":
            return "config.list", None, None
        first, _, tail = rest.partition("/")
        if first in ("export", "import") and not tail:
            return f"config.{first}", None, None
        if first in ("history", "rollback") and tail:
            return f"config.{first}", _cut(tail), None
        verb = {"GET": "read", "HEAD": "read", "PUT": "write", "DELETE": "delete"}.get(method, method.lower())
        return f"config.{verb}", _cut(rest), None
    if head == "policies":
        verb = {"GET": "read" if rest else "list", "PUT": "write", "DELETE": "delete"}.get(method, method.lower())
        return f"policy.{verb}", None, _cut(rest) or None
    if head == "auth":
        if rest == "tokens":
            return ("token.create" if method == "POST" else "token.list"), None, None
        if rest.startswith("tokens/"):
            return ("token.revoke" if method == "DELETE" else f"token.{method.lower()}"), None, _cut(rest[7:])
        return f"auth.{rest if rest in AUTH_ACTIONS else 'unknown'}", None, None
    if head == "envs":
        verb = {"GET": "list", "PUT": "write"}.get(method, method.lower())
        return f"env.{verb}", None, _cut(rest) or None
    if head == "audit":
        return "audit.read", None, None
    if head == "ws":
        return "ws.connect", None, None
    return head, None, None  # watch, diff


def outcome_of(status: int) -> str:
    if status < 400:
        return "allowed"
    if status in (401, 429):  # 429 here only ever replaces a 401 (damping)
        return "unauthenticated"
    if status == 403:
        return "denied"
    if status == 404:
        return "not_found"
    return "error"


def _version_from(body: bytes) -> int | None:
    """The ``version`` of a JSON response body (a config key's version on /config routes)."""
    if not body or len(body) > VERSION_BODY_LIMIT or body[:1] != b"{":
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    version = parsed.get("version") if isinstance(parsed, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def _created_token_id(body: bytes) -> str | None:
    """The id of a token ``POST /auth/tokens`` just created, so the entry names it (never the token string)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    token_id = parsed.get("id") if isinstance(parsed, dict) else None
    return _cut(token_id) if isinstance(token_id, str) else None


def _error_body(status: int, code: str, message: str, request_id: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, body


async def _name_refused_token(scope: dict[str, Any], entry: AuditEntry) -> AuditEntry:
    """A refused token that exists (expired or revoked) is named in the entry: who is still using it."""
    try:
        record = await asyncio.to_thread(scope["app"].state.container.authenticator.identify, _bearer(scope) or "")
    except Exception:  # noqa: BLE001 - naming is a nicety; the refusal is recorded either way
        return entry
    return replace(entry, service=record.service, token_id=record.id) if record is not None else entry


async def _durable(audit_log: Any, entry: AuditEntry) -> AuditEntry:
    """Submit ``entry`` and wait until it is durable: shielded and bounded.

    The shield keeps a cancelled waiter (a client that went away, an ``asyncio.wait_for`` around a receive)
    from cancelling the writer's future: the entry is still written. The bound turns a stuck writer into a
    ``TimeoutError`` that callers answer like a failed write (``503``) instead of hanging.
    """
    inner = asyncio.wrap_future(audit_log.submit(entry))
    inner.add_done_callback(_consume)
    return await asyncio.wait_for(asyncio.shield(inner), AUDIT_WAIT_SECONDS)


def _consume(future: asyncio.Future[AuditEntry]) -> None:
    """Retrieve the outcome of a future nobody awaits any more (no "exception was never retrieved" noise)."""
    if not future.cancelled():
        future.exception()


async def _caller(scope: dict[str, Any]) -> Principal | None:
    """Who a request entry is from, before the route has authenticated it (the lookup is cached)."""
    token = _bearer(scope)
    if token is None:
        return None
    try:
        return await asyncio.to_thread(scope["app"].state.container.authenticator.authenticate, token)
    except Exception:  # noqa: BLE001 - refused (the route will say so) or unknowable: the entry stays unnamed
        return None


def _bearer(scope: dict[str, Any]) -> str | None:
    """The request's bearer token, read the same way as the routes read it (``handlers.deps.parse_bearer``)."""
    return parse_bearer(Headers(scope=scope).get("authorization", ""))


def _has_bearer(scope: dict[str, Any]) -> bool:
    return _bearer(scope) is not None


class AuditMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and audited(scope.get("path", "")):
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http" or not audited(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        parts = scope["app"].state.container.extras["access"]
        started = utcnow()
        held: dict[str, Any] = {}
        state = {"answered": False, "dropped": False}
        mutating = scope.get("method", "GET") not in READ_METHODS
        if mutating:
            # Durable before the route runs: a change is never committed without a record of the attempt.
            request_id = scope.get("state", {}).get("request_id") or ""
            principal = await _caller(scope)
            attempt = replace(
                _entry(scope, started, 0, None, request_id), phase=REQUEST, outcome=ATTEMPT,
                service=principal.service if principal else None, token_id=principal.id if principal else None,
            )  # fmt: skip
            try:
                await _durable(parts.audit_log, attempt)
            except Exception:  # noqa: BLE001 - not durable (or too slow): do not run the request
                logger.error("audit write failed; answering 503 without running request %s", request_id)
                start, replaced = _error_body(503, "unavailable", "the audit log cannot be written; the request was not run", request_id)
                await send(start)
                await send({"type": "http.response.body", "body": replaced, "more_body": False})
                return

        async def guarded_send(message: dict[str, Any]) -> None:
            if state["dropped"]:
                return  # the rest of a response that was replaced by a 503
            if message["type"] == "http.response.start" and not state["answered"]:
                held["start"] = message
                return
            if message["type"] != "http.response.body" or state["answered"]:
                await send(message)
                return
            state["answered"] = True
            start = held["start"]
            status = start["status"]
            body = message.get("body", b"")
            request_id = scope.get("state", {}).get("request_id") or ""
            if status == 401 and _has_bearer(scope) and parts.damper.failure(_client(scope)):
                state["dropped"] = bool(message.get("more_body"))  # drop the rest of the 401's body
                status = 429
                start, replaced = _error_body(429, "rate_limited", "too many failed authentications from this address; retry later", request_id)
                start["headers"].append((b"retry-after", str(parts.damper.retry_after(_client(scope))).encode()))
                message = {"type": "http.response.body", "body": replaced, "more_body": False}
            version = _version_from(body) if 200 <= status < 300 and not message.get("more_body") else None
            entry = _entry(scope, started, status, version, request_id)
            if status in (401, 429) and _has_bearer(scope):
                entry = await _name_refused_token(scope, entry)
            if entry.action == "token.create" and status == 201 and not message.get("more_body"):
                entry = replace(entry, target=_created_token_id(body))
            try:
                await _durable(parts.audit_log, entry)
            except Exception:  # noqa: BLE001 - not durable: fail closed, serve nothing
                logger.error("audit write failed; answering 503 for request %s", request_id)
                text = (
                    "the audit log cannot record this request's outcome: it was attempted (its request entry is in the "
                    "audit log) but whether it took effect is unknown; read the current state before retrying"
                    if mutating
                    else "the audit log cannot be written; the request was not served"
                )
                start, replaced = _error_body(503, "unavailable", text, request_id)
                state["dropped"] = True
                await send(start)
                await send({"type": "http.response.body", "body": replaced, "more_body": False})
                return
            await send(start)
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if not state["answered"]:
                # The route failed before answering; record the failure (best effort: a 500 follows anyway).
                entry = _entry(scope, started, 500, None, scope.get("state", {}).get("request_id") or "")
                try:
                    await _durable(parts.audit_log, entry)
                except Exception:  # noqa: BLE001
                    logger.error("audit write failed for a failed request")
            raise

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``/ws``: the auth message and every subscribe are recorded (and durable) before anything follows.

        The middleware authenticates the first message itself (the lookup is cached) to know who it is, and
        records it before the app sees it. A subscribe is recorded with its real outcome: the app acts on it,
        and the entry is written when its answer is known — an error the app sends while handling it (a
        refusal: unknown env, bad ``since``, compacted …), or else the app asking for the next message
        (accepted). Events wait until then. If an entry cannot be written the socket gets
        ``{"type": "error", "code": "unavailable"}`` and is closed, and nothing more is sent: nothing is
        streamed unaudited.
        """
        parts = scope["app"].state.container.extras["access"]
        authenticator = scope["app"].state.container.authenticator
        # pending: the subscribe the app is handling (not yet recorded); reader: the task that received it
        session: dict[str, Any] = {"authenticated": False, "principal": None, "pending": None, "reader": None, "marker": None, "failed": False}
        settled = asyncio.Event()  # clear while a subscribe is pending: events wait for its record
        settled.set()

        async def record(action: str, status: int, body: dict[str, Any]) -> bool:
            entry = _ws_entry(scope, action, status, session["principal"], body)
            try:
                await _durable(parts.audit_log, entry)
                return True
            except Exception:  # noqa: BLE001 - fail closed (a failed or too slow write)
                logger.error("audit write failed; closing a websocket")
                await send({"type": "websocket.send", "text": json.dumps(
                    {"type": "error", "code": "unavailable", "message": "the audit log cannot be written"})})  # fmt: skip
                await send({"type": "websocket.close", "code": 1011})
                return False

        async def settle(status: int) -> bool:
            body, session["pending"] = session["pending"], None
            ok = await record("ws.subscribe", status, body)
            session["failed"] = session["failed"] or not ok
            settled.set()
            return ok

        async def audited_send(message: dict[str, Any]) -> None:
            if session["failed"]:
                return  # closed for a failed audit write: nothing more leaves
            if message["type"] == "websocket.send" and not settled.is_set():  # a subscribe is pending or being recorded
                sent = _ws_json(message)
                if sent.get("type") == "error" and session["pending"] is not None and asyncio.current_task() is session["reader"]:
                    # The app's answer to the subscribe it is handling: a refusal.
                    if not await settle(_status_of(str(sent.get("code")))):
                        return
                elif sent.get("type") == "event" and _SUBSCRIBE.get() is session["marker"]:
                    # An event of the subscription being recorded (its pump task was started while handling it,
                    # so it carries its marker). Other subscriptions' events go on: they may hold the app's send
                    # lock, which the handling of the pending subscribe may need for its answer.
                    await settled.wait()
                    if session["failed"]:
                        return
            await send(message)

        async def audited_receive() -> dict[str, Any]:
            if session["failed"]:
                return {"type": "websocket.disconnect", "code": 1011}
            if session["pending"] is not None and not await settle(200):  # handled without a refusal: accepted
                return {"type": "websocket.disconnect", "code": 1011}
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            raw = message.get("text") if message.get("text") is not None else (message.get("bytes") or b"").decode("utf-8", "replace")
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            body = body if isinstance(body, dict) else {}
            if not session["authenticated"]:
                session["authenticated"] = True
                # The client's auth message arrived in time: the app's auth timeout must not cut the lookup and
                # the record that follow (handlers/watch.py Socket.authenticate waits for them when this is set).
                scope.setdefault("state", {})["auth_message_received"] = True
                status = 401
                token = body.get("token")
                if body.get("type") == "auth" and isinstance(token, str):
                    try:
                        session["principal"] = await asyncio.to_thread(authenticator.authenticate, token)
                        status = 101
                    except Unauthenticated:  # the app answers the refusal itself; a guess counts for damping
                        if token.strip() and parts.damper.failure(_client(scope)):
                            status = 429
                    except Exception:  # noqa: BLE001 - the app answers the refusal itself
                        pass
                ok = await record("ws.connect", status, {})
                if ok and status == 429:
                    await send({"type": "websocket.send", "text": json.dumps(
                        {"type": "error", "code": "rate_limited",
                         "message": "too many failed authentications from this address; retry later",
                         "retry_after": parts.damper.retry_after(_client(scope))})})  # fmt: skip
                    await send({"type": "websocket.close", "code": 1008})
                    return {"type": "websocket.disconnect", "code": 1008}
            elif body.get("type") == "subscribe" and session["principal"] is not None:
                session["pending"], session["reader"], session["marker"] = body, asyncio.current_task(), object()
                _SUBSCRIBE.set(session["marker"])  # in the reader's context: tasks it starts now inherit it
                settled.clear()
                return message
            else:
                return message
            return message if ok else {"type": "websocket.disconnect", "code": 1011}

        status = 200  # a subscribe still pending when the app ends was handled without a refusal
        try:
            await self.app(scope, audited_receive, audited_send)
        except Exception:
            status = 500
            raise
        finally:
            if session["pending"] is not None:
                with contextlib.suppress(Exception):
                    await settle(status)


def _ws_json(message: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a ``websocket.send`` carries (``{}`` if it is none)."""
    raw = message.get("text")
    if raw is None:
        raw = (message.get("bytes") or b"").decode("utf-8", "replace")
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


_SUBSCRIBE: contextvars.ContextVar[object | None] = contextvars.ContextVar("tessera_ws_subscribe", default=None)
_STATUSES: dict[str, int] = {}


def _status_of(code: str) -> int:
    """The HTTP status of an error code (``not_found`` → 404), as the same error would have on an HTTP route."""
    if not _STATUSES:
        stack: list[type] = [TesseraError]
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if isinstance(getattr(cls, "code", None), str) and isinstance(getattr(cls, "status", None), int):
                _STATUSES.setdefault(cls.code, cls.status)  # type: ignore[attr-defined]
    return _STATUSES.get(code, 400)


def _ws_entry(scope: dict[str, Any], action: str, status: int, principal: Principal | None, body: dict[str, Any]) -> AuditEntry:
    namespace = env = target = None
    if action == "ws.subscribe":
        namespace = _cut(str(body.get("namespace") or "default"))
        env = _cut(str(body.get("env") or "default"))
        keys = body.get("keys")
        target = _cut(",".join(str(k) for k in keys)) if isinstance(keys, list) else None
    return AuditEntry(
        ts=utcnow(),
        request_id=scope.get("state", {}).get("request_id") or uuid.uuid4().hex,
        action=action,
        outcome=outcome_of(status),
        status=status,
        service=principal.service if principal else None,
        token_id=principal.id if principal else None,
        namespace=namespace,
        env=env,
        target=target,
        client=_client(scope),
        method="WS",
        path=_cut(scope.get("path", "")),
    )


def _client(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _entry(scope: dict[str, Any], started: datetime, status: int, version: int | None, request_id: str) -> AuditEntry:
    method = scope.get("method", "GET")
    path = scope.get("path", "")
    action, key, target = classify(method, path)
    if not action.startswith("config."):
        version = None  # only a config response's "version" is a key's version
    state = scope.get("state", {})
    principal: Principal | None = state.get("principal")
    resolved: Scope | None = state.get("scope")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    namespace = env = None
    if resolved is not None:
        namespace, env = resolved.namespace, resolved.env
    elif action.startswith("config") or action in ("watch", "diff"):
        namespace = _cut(query.get("namespace", ["default"])[0]) or "default"
        env = _cut(query.get("env", ["default"])[0]) or "default"
    if action == "diff":
        env = None
        target = _cut(f"{query.get('from', [''])[0]}..{query.get('to', [''])[0]}")
    elif action in ("config.list", "config.export") and query.get("prefix"):
        target = _cut(query["prefix"][0])
    elif action == "watch" and query.get("keys"):
        target = _cut(query["keys"][0])
    service = principal.service if principal is not None else None
    token_id = principal.id if principal is not None else None
    return AuditEntry(
        ts=started,
        request_id=request_id,
        action=action,
        outcome=outcome_of(status),
        status=status,
        service=service,
        token_id=token_id,
        namespace=namespace,
        env=env,
        key=key,
        version=version,
        target=target,
        client=_client(scope),
        method=method,
        path=_cut(path),
    )
