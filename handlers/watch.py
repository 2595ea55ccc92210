"""``GET /watch`` (long poll) and ``GET /ws`` (WebSocket): change events after a revision, per caller."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from core.errors import InvalidRequest, TesseraError
from core.model import Principal, parse_scope
from core.watch import POLL_INTERVAL, Watcher, clamp_timeout, parse_patterns
from handlers.deps import PrincipalDep, ScopeDep, ServiceDep, int_param

router = APIRouter()
AUTH_TIMEOUT_SECONDS = 10.0
REAUTH_SECONDS = 1.0  # a revoked token's socket closes within about a second


def _timeout(raw: str | None) -> float:
    if raw is None or raw == "":
        return clamp_timeout(None)
    try:
        return clamp_timeout(float(raw))
    except ValueError as exc:
        raise InvalidRequest("timeout must be a number of seconds") from exc


@router.get("/watch")
async def watch(
    request: Request,
    principal: PrincipalDep,
    scope: ScopeDep,
    service: ServiceDep,
    keys: str | None = None,
    since: str | None = None,
    timeout: str | None = None,
) -> dict[str, Any]:
    wait_seconds = _timeout(timeout)
    since_revision = int_param(since, "since", minimum=0)
    watcher = await run_in_threadpool(Watcher, service, principal, scope, parse_patterns(keys), since_revision)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        events = await run_in_threadpool(watcher.poll)
        remaining = deadline - loop.time()
        if events or remaining <= 0 or await request.is_disconnected():
            break
        await service.notifier.wait(min(remaining, POLL_INTERVAL))
    return {"revision": watcher.cursor, "events": [event.as_dict() for event in events]}


class Socket:
    """One WebSocket: its principal, its subscriptions, and one lock so messages never interleave."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.container = websocket.app.state.container
        self.send_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.principal: Principal | None = None
        self.token: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_json(message)

    async def error(self, code: str, message: str, **extra: Any) -> None:
        await self.send({"type": "error", "code": code, "message": message, **extra})

    async def authenticate(self) -> bool:
        try:
            first = await asyncio.wait_for(self.websocket.receive_json(), AUTH_TIMEOUT_SECONDS)
        except (TimeoutError, ValueError, KeyError):
            await self.error("unauthenticated", "the first message must be {\"type\": \"auth\", \"token\": ...}")
            return False
        if not isinstance(first, dict) or first.get("type") != "auth" or not isinstance(first.get("token"), str):
            await self.error("unauthenticated", "the first message must be {\"type\": \"auth\", \"token\": ...}")
            return False
        try:
            self.principal = await run_in_threadpool(self.container.authenticator.authenticate, first["token"])
        except TesseraError as exc:
            await self.error(exc.code, exc.message)
            return False
        self.token = first["token"]
        return True

    async def still_authenticated(self) -> None:
        """Close the socket once its token stops being valid (expired or revoked)."""
        while True:
            await asyncio.sleep(REAUTH_SECONDS)
            try:
                await run_in_threadpool(self.container.authenticator.authenticate, self.token)
            except TesseraError as exc:
                await self.error(exc.code, exc.message)
                await self.websocket.close(code=1008)
                return

    async def subscribe(self, message: dict[str, Any]) -> None:
        service = self.container.service
        try:
            scope = parse_scope(message.get("namespace"), message.get("env"))
            since = message.get("since")
            if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
                raise InvalidRequest("since must be an integer revision")
            keys = message.get("keys")
            if keys is not None and not isinstance(keys, list):
                raise InvalidRequest("keys must be a list of key patterns")
            watcher = await run_in_threadpool(Watcher, service, self.principal, scope, parse_patterns(keys), since)
        except TesseraError as exc:
            await self.error(exc.code, exc.message, **exc.extra)
            return
        self.tasks.append(asyncio.create_task(self.pump(watcher)))

    async def pump(self, watcher: Watcher) -> None:
        service = self.container.service
        while True:
            try:
                events = await run_in_threadpool(watcher.poll)
            except TesseraError as exc:
                await self.error(exc.code, exc.message, **exc.extra)
                return
            for event in events:
                await self.send({"type": "event", **event.as_dict()})
            if not events:
                await service.notifier.wait(POLL_INTERVAL)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    socket = Socket(websocket)
    try:
        if not await socket.authenticate():
            await websocket.close(code=1008)
            return
        socket.tasks.append(asyncio.create_task(socket.still_authenticated()))
        while True:
            try:
                message = await websocket.receive_json()
            except ValueError:
                await socket.error("invalid_request", "messages must be JSON objects")
                continue
            if isinstance(message, dict) and message.get("type") == "subscribe":
                await socket.subscribe(message)
            else:
                await socket.error("invalid_request", "expected {\"type\": \"subscribe\", ...}")
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        socket.close()
        with contextlib.suppress(Exception):
            await websocket.close()
