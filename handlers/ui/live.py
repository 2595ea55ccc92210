"""``/ui/ws``: live updates for a console page, over the signed-in session (the cookie; no token in the page).

The handshake must come from this server's own pages (``Origin`` equal to the ``Host`` the browser reached) and
carry a live session; otherwise it is refused before it is accepted (HTTP 403). The page then sends one
``{"type": "subscribe", "keys": [...], "since": <revision the page was rendered at>}`` (scope in the URL's query),
and gets, per change of a key it may read, what the page now resolves there and who made the change::

    {"type": "change", "key", "action", "env", "version", "changed_by",
     "resolved": {"version", "env", "secret", "updated_by", "updated_at", "value"?} | null}

A secret's value is never sent; a key whose value the token may only list sends nothing (watching needs
``read``, as on ``/ws``). The socket closes within about a second of its session ending (sign-out, revocation,
expiry). Audit: ``ui.ws.connect`` (101, or 401/403 refused) and ``ui.ws.subscribe``, as the session's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from tessera.core.errors import InvalidRequest, TesseraError, Unauthenticated
from tessera.core.model import Principal, Scope, format_time, parse_scope, utcnow
from tessera.core.watch import Watcher, parse_patterns
from tessera.handlers.auditing import Auditor
from tessera.handlers.render import dumps
from tessera.handlers.ui.console import COOKIE, Refused, check_origin

logger = logging.getLogger("tessera")
router = APIRouter(include_in_schema=False)
RECHECK_SECONDS = 1.0
MAX_KEYS = 1000


class ConsoleSocket:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.container = websocket.app.state.container
        self.sessions = websocket.app.state.console_sessions
        self.audit = websocket.app.state.audit_queue
        self.auditor: Auditor = websocket.scope.get("state", {}).get("auditor") or Auditor.begin(websocket.scope, "")
        self.cookie = websocket.cookies.get(COOKIE)
        self.principal: Principal | None = None
        self.send_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[Any]] = []

    async def record(self, action: str, status: int, **facts: Any) -> bool:
        self.auditor.principal = self.principal
        self.auditor.note(action, **facts)
        try:
            await self.audit.record(replace(self.auditor.entry(status), ts=utcnow(), method="WS"), durable=False)
            return True
        except Exception:  # noqa: BLE001 - fail closed: a socket whose records cannot be written is closed
            logger.error("audit write failed; closing a console socket")
            return False

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.websocket.send_text(dumps(message).decode())

    async def open(self) -> bool:
        """Check the origin and the session before accepting; every outcome is recorded."""
        headers = self.websocket.headers
        try:
            check_origin(headers.get("origin") or "null", headers.get("host"))
        except Refused:
            if await self.record("ui.ws.connect", 403):
                await self.websocket.close(code=1008)
            return False
        try:
            self.principal = await self.container.read(self.sessions.resolve, self.cookie)
        except Unauthenticated:
            if await self.record("ui.ws.connect", 401):
                await self.websocket.close(code=1008)
            return False
        if not await self.record("ui.ws.connect", 101):
            await self.websocket.close(code=1011)
            return False
        await self.websocket.accept()
        return True

    async def still_signed_in(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            try:
                await self.container.read(self.sessions.resolve, self.cookie)
            except TesseraError:
                with contextlib.suppress(Exception):
                    await self.send({"type": "error", "code": "unauthenticated", "message": "the session has ended"})
                    await self.websocket.close(code=1008)
                return

    async def subscribe(self, message: dict[str, Any], scope: Scope) -> bool:
        keys = message.get("keys")
        since = message.get("since")
        target = ",".join(str(k) for k in keys)[:256] if isinstance(keys, list) else None
        try:
            if not isinstance(keys, list) or len(keys) > MAX_KEYS:
                raise InvalidRequest("keys must be a list of at most 1000 key patterns")
            if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
                raise InvalidRequest("since must be an integer revision")
            watcher = await self.container.read(
                Watcher, self.container.service, self.principal, scope, parse_patterns(keys), since
            )
        except TesseraError as exc:
            if await self.record("ui.ws.subscribe", exc.status, target=target):
                await self.send({"type": "error", "code": exc.code, "message": exc.message})
            return True
        if not await self.record("ui.ws.subscribe", 200, target=target):
            return False
        self.tasks.append(asyncio.create_task(self.pump(watcher, scope)))
        return True

    def describe(self, scope: Scope, event: Any) -> dict[str, Any]:
        """What the page shows for the changed key now, and who changed it."""
        service, store = self.container.service, self.container.store
        change = event.change
        changed = store.get_version(change.scope, change.key, change.version)
        message: dict[str, Any] = {
            "type": "change", "key": change.key, "action": change.action.value, "env": change.scope.env, "version": change.version,
            "changed_by": changed.updated_by if changed is not None else None, "resolved": None,
        }  # fmt: skip
        try:
            result = service.get(self.principal, scope, change.key)
        except TesseraError:
            return message  # gone here (deleted, or now a subtree)
        if result.version is not None:
            version = result.version
            resolved: dict[str, Any] = {
                "version": version.version,
                "env": result.resolved_env,
                "secret": version.secret,
                "updated_by": version.updated_by,
                "updated_at": format_time(version.updated_at),
            }
            if not result.version.secret:
                resolved["value"] = json.dumps(result.value, ensure_ascii=False)
            message["resolved"] = resolved
        return message

    async def pump(self, watcher: Watcher, scope: Scope) -> None:
        service = self.container.service
        while True:
            seen = service.notifier.generation
            try:
                events = await self.container.read(watcher.poll)
            except TesseraError as exc:
                await self.send({"type": "error", "code": exc.code, "message": exc.message})
                return
            for event in events:
                await self.send(await self.container.read(self.describe, scope, event))
            if not events:
                self.container.feed_poller.ensure_running()
                await service.notifier.wait(None, seen, watcher.interest)


@router.websocket("/ui/ws", name="ui.ws.connect")
async def console_socket(websocket: WebSocket) -> None:
    socket = ConsoleSocket(websocket)
    if not await socket.open():
        return
    try:
        params = websocket.query_params
        socket.auditor.note_scope(params.get("namespace"), params.get("env"))
        scope = parse_scope(params.get("namespace"), params.get("env"))
        socket.tasks.append(asyncio.create_task(socket.still_signed_in()))
        while True:
            text = await websocket.receive_text()
            try:
                message = json.loads(text)
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("type") == "subscribe":
                if not await socket.subscribe(message, scope):
                    return
            else:
                await socket.send({"type": "error", "code": "invalid_request", "message": 'expected {"type": "subscribe", ...}'})
    except (WebSocketDisconnect, RuntimeError):
        pass
    except TesseraError as exc:
        with contextlib.suppress(Exception):
            await socket.send({"type": "error", "code": exc.code, "message": exc.message})
    finally:
        for task in socket.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await websocket.close()
