"""``GET /watch`` (long poll) and ``GET /ws`` (WebSocket): change events after a revision, per caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect

from tessera.core.backends.factory import Container
from tessera.core.errors import InvalidRequest, TesseraError
from tessera.core.model import Principal, Scope, utcnow
from tessera.core.policy import compile_path
from tessera.core.watch import Watcher, clamp_timeout, parse_patterns, parse_subscription
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import AuditorDep, ContainerDep, PrincipalDep, ScopeDep, bearer_token, int_param
from tessera.handlers.limits import LongPollSlot, SocketSlots
from tessera.handlers.render import dumps

logger = logging.getLogger("tessera")
router = APIRouter()
AUTH_TIMEOUT_SECONDS = 10.0
REAUTH_SECONDS = 1.0  # a revoked token's watches end and its sockets close within about a second
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


def _timeout(raw: str | None, maximum: float) -> float:
    if raw is None or raw == "":
        return clamp_timeout(None, maximum)
    try:
        return clamp_timeout(float(raw), maximum)
    except ValueError as exc:
        raise InvalidRequest("timeout must be a number of seconds") from exc


class HeldWatch:
    """A watch parked on the notifier: woken by a change it cares about, by its token being refused (the
    :class:`TokenSentinel`), or by its client leaving."""

    __slots__ = ("event", "refused", "gone")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.refused: TesseraError | None = None
        self.gone = False

    def refuse(self, exc: TesseraError) -> None:
        self.refused = exc
        self.event.set()

    def leave(self, _: object = None) -> None:
        self.gone = True
        self.event.set()


class TokenSentinel:
    """Re-checks the tokens of held watches and sockets once per ``interval`` — one lookup per distinct token,
    not one per watcher — and tells the holders of a token that stopped being valid (revoked or expired), so
    a revoked token's watches end within about a second while 10,000 parked watchers cost one check a second."""

    def __init__(self, container: Container, interval: float = REAUTH_SECONDS) -> None:
        self.container = container
        self.interval = interval
        self._held: dict[str, set[Callable[[TesseraError], None]]] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, token: str, on_refused: Callable[[TesseraError], None]) -> None:
        self._held.setdefault(token, set()).add(on_refused)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run())

    def release(self, token: str, on_refused: Callable[[TesseraError], None]) -> None:
        holders = self._held.get(token)
        if holders is not None:
            holders.discard(on_refused)
            if not holders:
                del self._held[token]

    async def _run(self) -> None:
        authenticate = self.container.authenticator.authenticate
        while self._held:
            await asyncio.sleep(self.interval)
            for token in list(self._held):
                try:
                    await self.container.read(authenticate, token)
                except TesseraError as exc:
                    if exc.status == 401:
                        for on_refused in list(self._held.get(token, ())):
                            on_refused(exc)
                    # other failures (the store unavailable for now): the watches stay; checked again next round


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (for a request whose body has been read: the next message is that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def long_poll(
    container: Container,
    sentinel: TokenSentinel,
    principal: Principal,
    token: str | None,
    scope: Scope,
    keys: str | None,
    since: str | None,
    timeout: str | None,
    receive: Receive | None,
) -> bytes:
    """The body of a ``GET /watch``: events after ``since`` that the caller may see, once there are any or when
    ``timeout`` passes. A parked request sleeps until a change that concerns its keys (no periodic wake-ups:
    10,000 parked watchers cost nothing while nothing they watch changes); its token is re-checked by the
    sentinel, its client's departure ends it early. ``TesseraError`` for refusals."""
    service = container.service
    wait_seconds = _timeout(timeout, container.settings.max_watch_seconds)
    since_revision = int_param(since, "since", minimum=0)
    if since_revision is not None and wait_seconds <= 0:
        # "Has anything changed since N?" (an SDK polling every 30-60 s, AppConfig-agent style): one read of the
        # revision counter answers "no" without a watcher; "yes" reads the changes, never from a stale feed.
        for pattern in parse_patterns(keys):
            compile_path(pattern)  # a bad pattern is 400 all the same
        await container.read(service.env_chain, scope.env)  # and an unknown env 404
        current = await container.read(service.store.current_revision)
        if current <= since_revision:
            return dumps({"revision": current, "events": []})
        if service.feed.head is not None and service.feed.head < current:
            await container.read(service.feed.refresh)
    watcher = await container.read(Watcher, service, principal, scope, parse_patterns(keys), since_revision)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    held: HeldWatch | None = None
    leaving: asyncio.Task[None] | None = None
    try:
        while True:
            seen = service.notifier.generation  # before reading: a commit after this read wakes the wait below
            events = await container.read(watcher.poll)
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                break
            if held is None:
                held = HeldWatch()
                if token:
                    sentinel.hold(token, held.refuse)
                if receive is not None:
                    leaving = loop.create_task(_disconnected(receive))
                    leaving.add_done_callback(held.leave)
            elif held.gone:
                break
            held.event.clear()
            container.feed_poller.ensure_running()
            await service.notifier.wait(remaining, seen, watcher.interest, held.event)
            if held.refused is not None:
                raise held.refused
            # Woken: the token is checked again before anything it wakes for is sent (a cached lookup, as on every
            # request), so a token revoked here gets nothing more even if the sentinel has not looked yet.
            await container.read(container.authenticator.authenticate, token)
    finally:
        if held is not None and token:
            sentinel.release(token, held.refuse)
        if leaving is not None and held is not None:
            leaving.remove_done_callback(held.leave)
            leaving.cancel()
    revision = watcher.cursor if events else await container.read(watcher.latest_revision)
    return dumps({"revision": revision, "events": [event.as_dict() for event in events]})


@router.get("/watch", name="watch")
async def watch(
    request: Request,
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    _slot: LongPollSlot,  # at most Settings.max_long_polls held per token (handlers/limits.py)
    keys: str | None = None,
    since: str | None = None,
    timeout: str | None = None,
) -> Response:
    """Declared for the OpenAPI document; ``GET /watch`` is answered by the ASGI front's fast path (the same
    :func:`long_poll`), this route only where that front is not in use."""
    auditor.note("watch", target=keys)
    sentinel: TokenSentinel = request.app.state.token_sentinel
    body = await long_poll(container, sentinel, principal, bearer_token(request), scope, keys, since, timeout, request.receive)
    return Response(body, media_type="application/json")


class Socket:
    """One WebSocket: its principal, its subscriptions, one lock so messages never interleave, and its audit
    records: the handler states each outcome itself (connect, every subscribe) and writes it before anything
    that follows from it is sent. A record that cannot be written closes the socket (fail-closed)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.container = websocket.app.state.container
        self.audit = websocket.app.state.audit_queue
        self.sentinel: TokenSentinel = websocket.app.state.token_sentinel
        self.auditor: Auditor = websocket.scope.get("state", {}).get("auditor") or Auditor.begin(websocket.scope, "")
        self.send_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.principal: Principal | None = None
        self.token: str | None = None
        self.subscriptions = 0
        self.slots = SocketSlots(self)  # per-token caps on sockets and subscriptions (handlers/limits.py)

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_text(dumps(message).decode())

    async def error(self, code: str, message: str, **extra: Any) -> None:
        await self.send({"type": "error", "code": code, "message": message, **extra})

    async def record(self, action: str, status: int, **facts: Any) -> bool:
        """Write this socket's record of ``action``; False (after telling the client and closing) if it cannot be."""
        auditor = self.auditor
        auditor.principal = self.principal
        auditor.note(action, **facts)
        entry = auditor.entry(status)
        try:
            await self.audit.record(replace(entry, ts=utcnow(), method="WS"), durable=False, late_status=503)
            return True
        except Exception:  # noqa: BLE001 - fail closed (a failed or too slow write)
            logger.error("audit write failed; closing a websocket")
            with contextlib.suppress(Exception):
                await self.error("unavailable", "the audit log cannot be written")
                await self.websocket.close(code=1011)
            return False

    async def receive(self) -> dict[str, Any] | None:
        """The next message as a JSON object; None for anything else (binary frames, bad JSON, non-objects)."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            return None  # a binary frame: the protocol is JSON text
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None

    async def authenticate(self) -> bool:
        """The first message must be ``{"type": "auth", "token": ...}`` within ``AUTH_TIMEOUT_SECONDS``; every
        outcome is recorded (``ws.connect``: 101 accepted, 401 refused or never authenticated, 429 damped)."""
        try:
            first = await asyncio.wait_for(self.receive(), AUTH_TIMEOUT_SECONDS)
        except TimeoutError:
            if await self.record("ws.connect", 401):
                await self.error("unauthenticated", "no auth message within the time allowed")
            return False
        except WebSocketDisconnect as gone:  # left (or was cut off: 1009, a message too large) before authenticating
            await self.record("ws.connect", 413 if gone.code == 1009 else 401)
            raise
        token = first.get("token") if isinstance(first, dict) and first.get("type") == "auth" else None
        if not isinstance(token, str):
            if await self.record("ws.connect", 401):
                await self.error("unauthenticated", "the first message must be {\"type\": \"auth\", \"token\": ...}")
            return False
        try:
            self.principal = await self.container.read(self.container.authenticator.authenticate, token)
        except TesseraError as exc:
            damper = self.container.access.damper
            client = self.auditor.client
            if token.strip() and exc.status == 401 and damper.failure(client):
                if await self.record("ws.connect", 429):
                    await self.error("rate_limited", "too many failed authentications from this address; retry later",
                                     retry_after=damper.retry_after(client))  # fmt: skip
                return False
            record = await self.container.read(self.container.authenticator.identify, token) if exc.status == 401 else None
            if record is not None:
                self.auditor.refused_token = (record.service, record.id)
            if await self.record("ws.connect", exc.status):
                await self.error(exc.code, exc.message)
            return False
        if not await self.slots.authenticated(self.principal):
            return False
        if not await self.record("ws.connect", 101):
            return False
        self.token = token
        return True

    def watch_token(self) -> None:
        """Close the socket once its token stops being valid (expired or revoked): the sentinel checks it."""
        assert self.token is not None
        self.sentinel.hold(self.token, self.refused)

    def refused(self, exc: TesseraError) -> None:
        self.tasks.append(asyncio.create_task(self._cut_off(exc)))

    async def _cut_off(self, exc: TesseraError) -> None:
        with contextlib.suppress(Exception):
            await self.error(exc.code, exc.message)
            await self.websocket.close(code=1008)

    async def subscribe(self, message: dict[str, Any]) -> bool:
        """Validate, record, then answer: a refusal's error or the subscription's events follow its record."""
        service = self.container.service
        keys = message.get("keys")
        target = ",".join(str(k) for k in keys) if isinstance(keys, list) else None
        self.auditor.note_scope(str(message.get("namespace") or "default"), str(message.get("env") or "default"))
        try:
            asked = parse_subscription(message, self.subscriptions)
            watcher = await self.container.read(Watcher, service, self.principal, asked.scope, asked.patterns, asked.since)
        except TesseraError as exc:
            if not await self.record("ws.subscribe", exc.status, target=target):
                return False
            await self.error(exc.code, exc.message, **exc.extra)
            return True
        if not await self.slots.subscription(target=target):
            return True
        if not await self.record("ws.subscribe", 200, target=target):
            return False
        self.subscriptions += 1
        self.tasks.append(asyncio.create_task(self.pump(watcher)))
        return True

    async def pump(self, watcher: Watcher) -> None:
        service = self.container.service
        while True:
            seen = service.notifier.generation
            try:
                events = await self.container.read(watcher.poll)
            except TesseraError as exc:
                await self.error(exc.code, exc.message, **exc.extra)
                return
            for event in events:
                await self.send({"type": "event", **event.as_dict()})
            if not events:
                self.container.feed_poller.ensure_running()
                await service.notifier.wait(None, seen, watcher.interest)

    def close(self) -> None:
        self.slots.close()
        if self.token is not None:
            self.sentinel.release(self.token, self.refused)
        for task in self.tasks:
            task.cancel()


@router.get("/ws", name="ws.connect", include_in_schema=False)
async def websocket_over_plain_http(auditor: AuditorDep) -> Response:
    """``/ws`` is a route of this API: a plain HTTP request to it is a bad request, not ``no_route``."""
    auditor.note("ws.connect")
    raise InvalidRequest("/ws is a WebSocket: connect with an Upgrade: websocket request, then send {\"type\": \"auth\", ...}")


@router.websocket("/ws", name="ws.connect")
async def websocket_endpoint(websocket: WebSocket) -> None:
    request_id = str(websocket.scope.get("state", {}).get("request_id", ""))
    await websocket.accept(headers=[(b"x-request-id", request_id.encode())] if request_id else None)
    socket = Socket(websocket)
    try:
        if not await socket.slots.connect():
            with contextlib.suppress(Exception):
                await websocket.close(code=1013)
            return
        if not await socket.authenticate():
            with contextlib.suppress(Exception):
                await websocket.close(code=1013 if socket.slots.refused else 1008)
            return
        socket.watch_token()
        while True:
            message = await socket.receive()
            if message is not None and message.get("type") == "subscribe":
                if not await socket.subscribe(message):
                    return
                continue
            # A refused message is recorded like any refusal (binary frames, bad JSON, unknown types).
            socket.auditor.target = None
            if not await socket.record("ws.message", 400):
                return
            if message is None:
                await socket.error("invalid_request", "messages must be JSON objects (text frames)")
            else:
                await socket.error("invalid_request", "expected {\"type\": \"subscribe\", ...}")
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        socket.close()
        with contextlib.suppress(Exception):
            await websocket.close()
