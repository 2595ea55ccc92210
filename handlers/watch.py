"""``GET /watch`` (long poll) and ``GET /ws`` (WebSocket): change events after a revision, per caller."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from tessera.core.errors import InvalidRequest, TesseraError
from tessera.core.model import Principal, parse_scope
from tessera.core.watch import MAX_SUBSCRIPTIONS_PER_SOCKET, POLL_INTERVAL, Watcher, clamp_timeout, parse_patterns
from tessera.handlers.deps import ContainerDep, PrincipalDep, ScopeDep, bearer_token, int_param

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


@router.get("/watch")
async def watch(
    request: Request,
    principal: PrincipalDep,
    scope: ScopeDep,
    container: ContainerDep,
    keys: str | None = None,
    since: str | None = None,
    timeout: str | None = None,
) -> dict[str, Any]:
    service = container.service
    wait_seconds = _timeout(timeout, container.settings.max_watch_seconds)
    since_revision = int_param(since, "since", minimum=0)
    watcher = await run_in_threadpool(Watcher, service, principal, scope, parse_patterns(keys), since_revision)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        seen = service.notifier.generation  # before reading: a commit after this read wakes the wait below
        events = await run_in_threadpool(watcher.poll)
        remaining = deadline - loop.time()
        if events or remaining <= 0 or await request.is_disconnected():
            break
        await service.notifier.wait(min(remaining, POLL_INTERVAL), seen)
        # A token revoked (or expired) while its watch is held stops receiving within a second (cached lookup).
        await run_in_threadpool(container.authenticator.authenticate, bearer_token(request))
    revision = watcher.cursor if events else await run_in_threadpool(watcher.latest_revision)
    return {"revision": revision, "events": [event.as_dict() for event in events]}


class Socket:
    """One WebSocket: its principal, its subscriptions, and one lock so messages never interleave."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.container = websocket.app.state.container
        self.send_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.principal: Principal | None = None
        self.token: str | None = None
        self.subscriptions = 0

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_json(message)

    async def error(self, code: str, message: str, **extra: Any) -> None:
        await self.send({"type": "error", "code": code, "message": message, **extra})

    async def authenticate(self) -> bool:
        # The timeout bounds the client, not the server: once the auth message has arrived (the audit middleware
        # marks it in the connection state) its lookup and audit record are waited for (they are bounded there),
        # so a timeout never cancels a half-done record or drops a message that came in time.
        receiving = asyncio.ensure_future(self.websocket.receive_json())
        try:
            await asyncio.wait({receiving}, timeout=AUTH_TIMEOUT_SECONDS)
            if not receiving.done() and getattr(self.websocket.state, "auth_message_received", False):
                await asyncio.wait({receiving}, timeout=AUTH_TIMEOUT_SECONDS)
            if not receiving.done():
                raise TimeoutError
            first = receiving.result()
        except (TimeoutError, ValueError, KeyError):
            await self.error("unauthenticated", "the first message must be {\"type\": \"auth\", \"token\": ...}")
            return False
        finally:
            receiving.cancel()  # a no-op once it is done
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
        if self.subscriptions >= MAX_SUBSCRIPTIONS_PER_SOCKET:
            await self.error("invalid_request", f"at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket")
            return
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
        self.subscriptions += 1
        self.tasks.append(asyncio.create_task(self.pump(watcher)))

    async def pump(self, watcher: Watcher) -> None:
        service = self.container.service
        while True:
            seen = service.notifier.generation
            try:
                events = await run_in_threadpool(watcher.poll)
            except TesseraError as exc:
                await self.error(exc.code, exc.message, **exc.extra)
                return
            for event in events:
                await self.send({"type": "event", **event.as_dict()})
            if not events:
                await service.notifier.wait(POLL_INTERVAL, seen)

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
