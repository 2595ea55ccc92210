"""The ASGI front of the service: request ids, response headers, auditing, and the fast read path.

One plain ASGI callable (no ``BaseHTTPMiddleware``: no task group, no memory streams per request) does in one
pass what every request needs: a request id, the security headers, the audit record written before the response
leaves (fail-closed: ``503`` when it cannot be), and brute-force damping of failed tokens. Routes state their
audit facts on the request's :class:`~tessera.handlers.auditing.Auditor`.

The hot paths — ``GET /config/{key}``, ``PUT /config/{key}``, ``GET /watch``, ``GET /health``, ``GET /ready`` — are answered here directly, without
FastAPI's routing and dependency machinery; everything else goes to the FastAPI app (``handlers/app.py``), which
also declares the hot paths for the OpenAPI document and answers the forms the fast path leaves to it
(``HEAD``, ``?explain=true``). Both share the route logic in ``handlers/reads.py``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import parse_qsl

from tessera import __version__
from tessera.core.access_model import AuditEntry
from tessera.core.deadline import start as start_deadline
from tessera.core.errors import TesseraError
from tessera.core.idempotency import LEASE, IdempotencyGuard, parse_idempotency_key
from tessera.core.model import Principal, parse_scope
from tessera.handlers import idempotency
from tessera.handlers.auditing import READ_METHODS, Auditor, AuditQueue, audited, facts_from_route
from tessera.handlers.config import apply_write
from tessera.handlers.deps import asgi_body, collect_body, parse_bearer, value_object
from tessera.handlers.limits import LONG_POLL, caller, limits_of
from tessera.handlers.reads import Headers, read_response
from tessera.handlers.render import JSON, dumps, error_body
from tessera.handlers.watch import TokenSentinel, long_poll

logger = logging.getLogger("tessera")
# The standard ASGI shapes (what uvicorn and Mangum declare): a scope and messages are mutable mappings.
AsgiScope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

# Any visible ASCII (and spaces) a client or a tracing proxy uses for ids is echoed; nothing that could split a
# header or a log line.
MAX_REQUEST_ID = 200
NO_STORE_PREFIXES = ("/config", "/watch", "/auth", "/audit", "/ui")  # answers that may hold values or token metadata
RESERVED = ("export", "import", "history", "rollback", "promote")
IDEMPOTENT_METHODS = frozenset({"PUT", "DELETE", "POST"})
OWN_BOUNDS = frozenset({"/watch", "/config/import"})  # no request deadline: bounded by their timeout, per-key commits
_ids = itertools.count(1)
_ID_PREFIX = os.urandom(6).hex()  # unique per process: ids from different workers and nodes never collide


def log_failure(exc: TesseraError) -> None:
    """A server-side failure is logged by its code and our message, never its cause's text (it may hold a value)."""
    if exc.status >= 500:
        logger.error("request failed: %s (%s)", exc.code, exc.message)


NOT_SERVED = "the audit log cannot be written; the request was not served"
HOLD_EXTENSION = "tessera.hold"  # scope["extensions"] key of a server's HeldOutput
_NO_EXTENSIONS: dict[str, Any] = {}


class HeldOutput(Protocol):
    """What a server may offer a read in ``scope["extensions"]["tessera.hold"]`` (``local/response_hold.py``):
    its connection's output held back, so that the read sends its response at once and its record is appended
    afterwards, at the end of the event-loop turn, with the turn's other records; only then do the held bytes go
    out. Without it the read awaits its record, then sends (the contract's rule either way: record first)."""

    def hold(self) -> None:
        """Keep what the connection writes from now on."""

    def release(self) -> None:
        """The record of one :meth:`hold` is appended: once none is left, send what was kept."""

    def refuse(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The record cannot be appended: drop what was kept, answer this instead, close the connection."""


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):010x}"


def offered_request_id(raw: bytes) -> str | None:
    if 0 < len(raw) <= MAX_REQUEST_ID and all(0x20 <= byte <= 0x7E for byte in raw):
        return raw.decode("ascii")
    return None


_OWN_HEADERS = frozenset({b"x-request-id", b"x-content-type-options", b"cache-control"})


def response_headers(request_id: str, path: str, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    """The route's headers plus the ones every response carries (set here only, never twice)."""
    headers = [(b"x-request-id", request_id.encode()), (b"x-content-type-options", b"nosniff")]
    if path.startswith(NO_STORE_PREFIXES):
        headers.append((b"cache-control", b"no-store"))
    if extra:
        headers.extend(item for item in extra if item[0].lower() not in _OWN_HEADERS)
    return headers


def _full_match(routes: Any, scope: AsgiScope) -> dict[str, Any] | None:
    """The child scope of the route that takes ``scope`` (its ``route``, ``path_params``), or None. Looks inside
    included routers: newer FastAPI keeps each ``include_router`` as one wrapper whose match names no route."""
    from starlette.routing import Match

    for route in routes:
        match, child = route.matches(scope)
        if match is not Match.FULL:
            continue
        inner = getattr(route, "original_router", None)
        if "route" not in child and inner is not None:
            found = _full_match(inner.routes, scope)
            if found is not None:
                return found
        return dict(child)
    return None


def _header(scope: AsgiScope, name: bytes) -> str | None:
    for header, value in scope["headers"]:
        if header == name:
            return str(value.decode("latin-1"))
    return None


def sized(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with the body's ``Content-Length`` (a whole body is known): without it the server chunks the
    body, which an HTTP/1.0 client (many health checks) cannot read."""
    if status in (204, 304) or any(name.lower() == b"content-length" for name, _ in headers):
        return headers
    return [*headers, (b"content-length", str(len(body)).encode())]


class TesseraASGI:
    def __init__(self, container: Any, api: Any) -> None:
        self.container = container
        self.api = api
        self.access = container.access
        self.audit = AuditQueue(self.access.audit_log)
        self.damper = self.access.damper
        self.request_deadline: float = container.settings.request_deadline
        api.state.audit_queue = self.audit  # the WebSocket handler records through the same queue
        self.sentinel = TokenSentinel(container)
        api.state.token_sentinel = self.sentinel  # re-checks the tokens of held watches, once per token

    # ------------------------------------------------------------------ dispatch
    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.api(scope, receive, send)
            return
        request_id, authorization, if_none_match, idempotency_key = self._headers(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path: str = scope["path"]
        if kind == "websocket":
            if audited(path):
                state["auditor"] = Auditor.begin(scope, request_id)
            if _full_match(self.api.router.routes, scope) is None:
                await self._no_websocket_route(scope, send, state.get("auditor"), request_id)
                return
            await self.api(scope, receive, send)
            return
        method = scope["method"]
        if method == "GET" and path == "/health":
            await self._respond(send, request_id, path, *await self._health())
            return
        if method == "GET" and path == "/ready":
            await self._respond(send, request_id, path, *await self._ready(request_id))
            return
        # The request's deadline (core/deadline.py), checked before its commit point; watches and imports keep their
        # own bounds. Each request runs in its own task, whose context this is: nothing to reset.
        start_deadline(None if path in OWN_BOUNDS else self.request_deadline)
        if not audited(path):
            await self.api(scope, receive, self._with_headers(send, request_id, path))
            return
        auditor = Auditor.begin(scope, request_id)
        state["auditor"] = auditor
        if not self.audit.ready:  # fail closed at once: nothing is served that the audit log cannot record
            await self._respond(send, request_id, path, *error_body(503, "unavailable", self.audit.failure or "the audit log cannot be written", request_id))
            return
        if method == "GET" and path.startswith("/config/"):
            key = path[8:]
            if key.split(".", 1)[0].split("/", 1)[0] not in RESERVED:
                params = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if scope["query_string"] else {}
                if "explain" not in params:
                    await self._fast_read(scope, send, auditor, key, params, authorization, if_none_match)
                    return
        if method == "GET" and path == "/watch":
            await self._fast_watch(scope, receive, send, auditor, authorization)
            return
        if method == "PUT" and path.startswith("/config/") and idempotency_key is None:
            key = path[8:]
            if key.split(".", 1)[0].split("/", 1)[0] not in RESERVED:
                await self._fast_write(scope, receive, send, auditor, key, authorization)
                return
        if idempotency_key is not None and method in IDEMPOTENT_METHODS and self.container.idempotency is not None:
            await self._idempotent(scope, receive, send, auditor, idempotency_key)
            return
        await self._through_api(scope, receive, send, auditor)

    # ------------------------------------------------------------------ Idempotency-Key
    async def _idempotent(self, scope: AsgiScope, receive: Receive, send: Send, auditor: Auditor, raw_key: bytes) -> None:
        """Claim (token, key); run the request as the claim's owner, or answer from what the claim holds."""
        container, store = self.container, self.container.idempotency
        token = self._bearer(scope)
        if not self._route_facts(scope, auditor):  # no route (404, 405): nothing to claim, nothing can change
            await self._through_api(scope, receive, send, auditor)
            return
        try:
            key = parse_idempotency_key(raw_key.decode("latin-1"))
            principal = await container.read(container.authenticator.authenticate, token)
        except TesseraError as exc:
            if exc.status == 401:  # the route refuses it (and the refusal is recorded there, with damping)
                await self._through_api(scope, receive, send, auditor)
                return
            await self._finish(scope, send, auditor, *error_body(exc.status, exc.code, exc.message, auditor.request_id), token)
            return
        auditor.principal = principal
        try:
            body = await idempotency.read_body(receive)
            asked = idempotency.new_claim(principal.id, key, scope, body, auditor.action or "", token)
            claim = await container.blocking(store.claim, asked, asked.expires_at - LEASE)
            if not claim.ours:
                assert claim.record is not None
                status, headers, answer = await container.read(
                    idempotency.answer_for, claim.record, asked, container.store, container.access.stores
                )
                await self._finish(scope, send, auditor, status, headers, answer, token)
                return
        except TesseraError as exc:
            log_failure(exc)
            await self._finish(scope, send, auditor, *error_body(exc.status, exc.code, exc.message, auditor.request_id, **exc.extra), token)
            return
        guard = IdempotencyGuard(principal.id, key, asked.owner)
        auditor.idempotency_guard = guard
        answered: dict[str, Any] = {"status": 500, "body": bytearray()}

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answered["body"].extend(message.get("body", b""))
            await send(message)

        try:
            await self._through_api(scope, idempotency.replaying(body, receive), capture, auditor)
        finally:
            await container.blocking(idempotency.finish_or_release, store, guard, auditor, answered["status"], bytes(answered["body"]))

    def _route_facts(self, scope: AsgiScope, auditor: Auditor) -> bool:
        """Which route a request is for, before it runs (an answer from its claim never reaches the router);
        False when no route takes it."""
        child = _full_match(self.api.router.routes, scope)
        facts_from_route(auditor, scope if child is None else {**scope, **child})
        return child is not None

    @staticmethod
    def _headers(scope: AsgiScope) -> tuple[str, bytes | None, bytes | None, bytes | None]:
        request_id = authorization = if_none_match = idempotency_key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                request_id = offered_request_id(value)
            elif name == b"if-none-match":
                if_none_match = value
            elif name == b"idempotency-key":  # two fields are one comma-joined value (HTTP): refused as a key
                idempotency_key = value if idempotency_key is None else idempotency_key + b", " + value
        return request_id or new_request_id(), authorization, if_none_match, idempotency_key

    # ------------------------------------------------------------------ the fast read path
    async def _fast_read(
        self,
        scope: AsgiScope,
        send: Send,
        auditor: Auditor,
        key: str,
        params: dict[str, str],
        authorization: bytes | None,
        if_none_match: bytes | None,
    ) -> None:
        auditor.note("config.read", key=key)

        def read(principal: Principal, token: str | None) -> Awaitable[tuple[int, Headers, bytes]]:
            return self.container.read(read_response, self.container.service, auditor, principal, key, params, if_none_match)

        await self._answer(scope, send, auditor, params, authorization, read)

    async def _fast_watch(self, scope: AsgiScope, receive: Receive, send: Send, auditor: Auditor, authorization: bytes | None) -> None:
        """``GET /watch`` without FastAPI: a release of 10,000 parked watchers is 10,000 of these answers."""
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if scope["query_string"] else {}
        keys = params.get("keys")
        auditor.note("watch", target=keys)

        async def watch(principal: Principal, token: str | None) -> tuple[int, Headers, bytes]:
            where = parse_scope(params.get("namespace"), params.get("env"))
            auditor.note(scope=where)
            with limits_of(self.api).hold(LONG_POLL, caller(principal, auditor.client), auditor):  # handlers/limits.py
                body = await long_poll(
                    self.container, self.sentinel, principal, token, where, keys, params.get("since"), params.get("timeout"), receive
                )
            return 200, [JSON], body

        await self._answer(scope, send, auditor, params, authorization, watch)

    async def _fast_write(self, scope: AsgiScope, receive: Receive, send: Send, auditor: Auditor, key: str, authorization: bytes | None) -> None:
        """``PUT /config/{key}`` without FastAPI (its dependency solving was half of a write's event-loop time):
        the caller, then the scope, then the body (bounded while it arrives), then the route's own logic
        (``handlers/config.apply_write``). With an ``Idempotency-Key`` it goes the API's way (``_idempotent``)."""
        params = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if scope["query_string"] else {}
        auditor.note("config.write", key=key)

        async def write(principal: Principal, token: str | None) -> tuple[int, Headers, bytes]:
            where = parse_scope(params.get("namespace"), params.get("env"))
            auditor.note(scope=where)
            body = value_object(await collect_body(_header(scope, b"content-length"), asgi_body(receive)))
            try:
                status, answer = await apply_write(self.container, self.audit, auditor, principal, where, key, body)
            except TesseraError:
                raise
            except Exception as exc:  # noqa: BLE001 - the API's catch-all answer (handlers/app.py), in the contract's shape
                logger.error("unexpected error: %s", type(exc).__name__)
                return error_body(500, "internal", "internal error", auditor.request_id)
            return status, [JSON], answer

        await self._answer(scope, send, auditor, params, authorization, write)

    async def _answer(
        self,
        scope: AsgiScope,
        send: Send,
        auditor: Auditor,
        params: dict[str, str],
        authorization: bytes | None,
        work: Callable[[Principal, str | None], Awaitable[tuple[int, Headers, bytes]]],
    ) -> None:
        """A fast path's request: its scope noted, its token authenticated, ``work`` done for the principal (a
        refusal rendered in the contract's shape), then the record and the response."""
        auditor.note_scope(params.get("namespace"), params.get("env"))
        token = parse_bearer(authorization.decode("latin-1")) if authorization is not None else None
        try:
            principal = await self.container.read(self.container.authenticator.authenticate, token)
            auditor.principal = principal
            status, headers, body = await work(principal, token)
        except TesseraError as exc:
            log_failure(exc)
            status, headers, body = error_body(exc.status, exc.code, exc.message, auditor.request_id, **exc.extra)
            if "retry_after" in exc.extra:  # 429 too_many_requests
                headers.append((b"retry-after", str(exc.extra["retry_after"]).encode()))
        await self._finish(scope, send, auditor, status, headers, body, token)

    # ------------------------------------------------------------------ requests routed by FastAPI
    async def _through_api(self, scope: AsgiScope, receive: Receive, send: Send, auditor: Auditor) -> None:
        """Run the FastAPI app, holding its response back until the request's record is written."""
        held: dict[str, Any] = {}
        answered = False
        dropped = False
        request_id = auditor.request_id
        token = self._bearer(scope)

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            nonlocal answered, dropped
            if dropped:
                return  # the rest of a response that was replaced
            kind = message["type"]
            if kind == "http.response.start" and not answered:
                held["start"] = message
                return
            if kind != "http.response.body" or answered:
                await send(message)
                return
            answered = True
            start = held["start"]
            facts_from_route(auditor, scope)
            body = message.get("body", b"")
            more = bool(message.get("more_body"))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length" or not more]
            replaced = await self._finish(scope, send, auditor, start["status"], headers, body, token, more_body=more)
            dropped = replaced and more

        try:
            await self.api(scope, receive, guarded_send)
        except Exception:
            if not answered:
                # The route failed before answering; record the failure (best effort: a 500 follows anyway).
                facts_from_route(auditor, scope)
                try:
                    await self.audit.record(auditor.entry(500), durable=True)
                except Exception:  # noqa: BLE001
                    logger.error("audit write failed for a failed request %s", request_id)
            raise

    # ------------------------------------------------------------------ the record, then the response
    async def _finish(
        self,
        scope: AsgiScope,
        send: Send,
        auditor: Auditor,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        token: str | None,
        more_body: bool = False,
    ) -> bool:
        """Record the request, then send its response; True when the response was replaced (429 or 503). A read
        under a server that offers a hold (``HeldOutput``) sends at once: the server keeps the bytes until the
        record is appended, or sends a 503 in their place."""
        request_id, path = auditor.request_id, scope["path"]
        replaced = False
        if status == 401 and token:
            client = auditor.client
            if self.damper.failure(client):
                status, headers, body = error_body(429, "rate_limited", "too many failed authentications from this address; retry later", request_id)
                headers.append((b"retry-after", str(self.damper.retry_after(client)).encode()))
                replaced, more_body = True, False
            record = await self.container.read(self.container.authenticator.identify, token)
            if record is not None:  # an expired or revoked token: name who still uses it
                auditor.refused_token = (record.service, record.id)
        if not auditor.in_commit:
            entry = auditor.entry(status)
            hold = scope.get("extensions", _NO_EXTENSIONS).get(HOLD_EXTENSION) if not more_body and scope["method"] in READ_METHODS else None
            if hold is not None:  # sent now, held by the server until the record is appended
                self._send_held(hold, entry, request_id, path)
            else:
                try:
                    await self.audit.record(entry, durable=scope["method"] not in READ_METHODS, late_status=503)
                except Exception:  # noqa: BLE001 - not recorded (or too slow): fail closed, serve nothing
                    logger.error("audit write failed; answering 503 for request %s", request_id)
                    mutating = scope["method"] not in READ_METHODS
                    text = (
                        "the audit log cannot record this request's outcome; whether it took effect is unknown: "
                        "read the current state before retrying"
                        if mutating
                        else NOT_SERVED
                    )
                    status, headers, body = error_body(503, "unavailable", text, request_id)
                    replaced, more_body = True, False
        if not more_body:
            headers = sized(status, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": response_headers(request_id, path, headers)})
        await send({"type": "http.response.body", "body": body, "more_body": more_body})
        return replaced

    def _send_held(self, hold: HeldOutput, entry: AuditEntry, request_id: str, path: str) -> None:
        """Hold the connection's output until ``entry`` is appended; a record that cannot be turns the held
        response into ``503`` (nothing of it goes out)."""
        hold.hold()

        def recorded(error: BaseException | None) -> None:
            if error is None:
                hold.release()
                return
            logger.error("audit write failed; answering 503 for request %s", request_id)
            status, headers, body = error_body(503, "unavailable", NOT_SERVED, request_id)
            hold.refuse(status, response_headers(request_id, path, sized(status, headers, body)), body)

        self.audit.record_then(entry, recorded, late_status=503)

    async def _no_websocket_route(self, scope: AsgiScope, send: Send, auditor: Auditor | None, request_id: str) -> None:
        """A WebSocket upgrade to a path that is no WebSocket route: ``404 no_route`` like any request (recorded
        first when its path is audited; nothing is served if it cannot be), not a bare ``403``."""
        path = scope["path"]
        status, headers, body = error_body(404, "no_route", "no such route in the Tessera API (check the base URL)", request_id)
        if auditor is not None:
            facts_from_route(auditor, scope)
            try:
                await self.audit.record(replace(auditor.entry(404), method="WS"), durable=False, late_status=503)
            except Exception:  # noqa: BLE001 - fail closed
                logger.error("audit write failed; refusing a websocket upgrade %s", request_id)
                status, headers, body = error_body(503, "unavailable", "the audit log cannot be written", request_id)
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": response_headers(request_id, path, headers)})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without the denial-response extension: a close before accepting (its 403)
            await send({"type": "websocket.close", "code": 1008})

    # ------------------------------------------------------------------ health and readiness
    async def _health(self) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        store = self.container.store
        revision = await self.container.read(store.current_revision)
        body = dumps({"status": "ok", "backend": store.backend_name, "revision": revision, "version": __version__})
        return 200, [(b"content-type", b"application/json")], body

    async def _ready(self, request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        reason = await self.container.ready_reason()
        if reason is not None:
            return error_body(503, "not_ready", reason, request_id)
        return 200, [(b"content-type", b"application/json")], b'{"status":"ready"}'

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _bearer(scope: AsgiScope) -> str | None:
        authorization = _header(scope, b"authorization")
        return parse_bearer(authorization) if authorization is not None else None

    @staticmethod
    async def _respond(send: Send, request_id: str, path: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": response_headers(request_id, path, sized(status, headers, body))})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _with_headers(send: Send, request_id: str, path: str) -> Send:
        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": response_headers(request_id, path, list(message.get("headers", [])))}
            await send(message)

        return sending
