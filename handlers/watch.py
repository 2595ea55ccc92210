"""``GET /watch`` (long poll) and ``GET /ws`` (WebSocket): change events after a revision, per caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect

from tessera.core.errors import InvalidRequest, TesseraError
from tessera.core.model import Principal, parse_scope, utcnow
from tessera.core.watch import MAX_SUBSCRIPTIONS_PER_SOCKET, POLL_INTERVAL, Watcher, clamp_timeout, parse_patterns
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import AuditorDep, ContainerDep, PrincipalDep, ScopeDep, bearer_token, int_param
from tessera.handlers.render import dumps

logger = logging.getLogger("tessera")
router = APIRouter()
AUTH_TIMEOUT_SECONDS = 10.0
REAUTH_SECONDS = 1.0  # a revoked token's socket closes within about a second


def _timeout(raw: str | None, maximum: float) -> float:
    if raw is None or raw == "":
        return clamp_timeout(None, maximum)
    try:
        return clamp_timeout(float(raw), maximum)
    except ValueError as exc:
        raise InvalidRequest("timeout must be a number of seconds") from exc


@router.get("/watch", name="watch")
async def watch(
    request: Request,
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    auditor: AuditorDep,
    keys: str | None = None,
    since: str | None = None,
    timeout: str | None = None,
) -> Response:
    auditor.note("watch", target=keys)
    service = container.service
    wait_seconds = _timeout(timeout, container.settings.max_watch_seconds)
    since_revision = int_param(since, "since", minimum=0)
    watcher = await container.read(Watcher, service, principal, scope, parse_patterns(keys), since_revision)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        seen = service.notifier.generation  # before reading: a commit after this read wakes the wait below
        events = await container.read(watcher.poll)
        remaining = deadline - loop.time()
        if events or remaining <= 0 or await request.is_disconnected():
            break
        container.feed_poller.ensure_running()
        await service.notifier.wait(min(remaining, POLL_INTERVAL), seen)
        # A token revoked (or expired) while its watch is held stops receiving within a second (cached lookup).
        await container.read(container.authenticator.authenticate, bearer_token(request))
    revision = watcher.cursor if events else await container.read(watcher.latest_revision)
    body = {"revision": revision, "events": [event.as_dict() for event in events]}
    return Response(dumps(body), media_type="application/json")


class Socket:
    """One WebSocket: its principal, its subscriptions, one lock so messages never interleave, and its audit
    records: the handler states each outcome itself (connect, every subscribe) and writes it before anything
    that follows from it is sent. A record that cannot be written closes the socket (fail-closed)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.container = websocket.app.state.container
        self.audit = websocket.app.state.audit_queue
        self.auditor: Auditor = websocket.scope.get("state", {}).get("auditor") or Auditor.begin(websocket.scope, "")
        self.send_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.principal: Principal | None = None
        self.token: str | None = None
        self.subscriptions = 0

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
        if not await self.record("ws.connect", 101):
            return False
        self.token = token
        return True

    async def still_authenticated(self) -> None:
        """Close the socket once its token stops being valid (expired or revoked)."""
        while True:
            await asyncio.sleep(REAUTH_SECONDS)
            try:
                await self.container.read(self.container.authenticator.authenticate, self.token)
            except TesseraError as exc:
                await self.error(exc.code, exc.message)
                await self.websocket.close(code=1008)
                return

    async def subscribe(self, message: dict[str, Any]) -> bool:
        """Validate, record, then answer: a refusal's error or the subscription's events follow its record."""
        service = self.container.service
        keys = message.get("keys")
        target = ",".join(str(k) for k in keys) if isinstance(keys, list) else None
        self.auditor.note_scope(str(message.get("namespace") or "default"), str(message.get("env") or "default"))
        try:
            if self.subscriptions >= MAX_SUBSCRIPTIONS_PER_SOCKET:
                raise InvalidRequest(f"at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket")
            scope = parse_scope(message.get("namespace"), message.get("env"))
            since = message.get("since")
            if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
                raise InvalidRequest("since must be an integer revision")
            if keys is not None and not isinstance(keys, list):
                raise InvalidRequest("keys must be a list of key patterns")
            watcher = await self.container.read(Watcher, service, self.principal, scope, parse_patterns(keys), since)
        except TesseraError as exc:
            if not await self.record("ws.subscribe", exc.status, target=target):
                return False
            await self.error(exc.code, exc.message, **exc.extra)
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
                await service.notifier.wait(POLL_INTERVAL, seen)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


@router.websocket("/ws", name="ws.connect")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    socket = Socket(websocket)
    try:
        if not await socket.authenticate():
            with contextlib.suppress(Exception):
                await websocket.close(code=1008)
            return
        socket.tasks.append(asyncio.create_task(socket.still_authenticated()))
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
