"""Caps on what one caller holds open at once: long polls, WebSockets, subscriptions (issue 13 §3).

One read-only token once held 300 long polls and 100 sockets × 64 subscriptions, and everyone's reads slowed from
19 ms to 4 s. Each caller — a token, or a client address while no token is known (a WebSocket before its auth
message) — may hold at most ``Settings.max_long_polls`` ``/watch`` requests, ``max_websockets`` sockets and
``max_subscriptions`` subscriptions (over all its sockets) at once; one more is refused with
``429 too_many_requests`` and ``Retry-After``. The defaults are high enough for a fleet sharing one token; counts
are per server process (``--workers N``: per worker).

>>> limits = ConcurrencyLimits(long_polls=1, websockets=1, subscriptions=2)
>>> with limits.hold(LONG_POLL, "token:t1"):
...     limits.held(LONG_POLL, "token:t1")
1
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Request

from tessera.core.errors import TooManyRequests
from tessera.core.model import Principal
from tessera.handlers.auditing import Auditor
from tessera.handlers.deps import AuditorDep, PrincipalDep

LONG_POLL, WEBSOCKET, SUBSCRIPTION = "long polls", "WebSockets", "subscriptions"
RETRY_AFTER_SECONDS = 5  # one of the caller's own long polls or sockets usually ends by then


def caller(principal: Principal | None, address: str) -> str:
    """Whose count a request goes to: its token's, or its address's while it has no token."""
    return f"token:{principal.id}" if principal is not None else f"address:{address}"


class ConcurrencyLimits:
    def __init__(self, long_polls: int, websockets: int, subscriptions: int) -> None:
        self.caps = {LONG_POLL: long_polls, WEBSOCKET: websockets, SUBSCRIPTION: subscriptions}
        self._held: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> ConcurrencyLimits:
        return cls(settings.max_long_polls, settings.max_websockets, settings.max_subscriptions)

    def held(self, kind: str, who: str) -> int:
        return self._held.get((kind, who), 0)

    def acquire(self, kind: str, who: str, auditor: Auditor | None = None) -> None:
        """Count one more ``kind`` for ``who``, or raise ``TooManyRequests`` (nothing counted; the request's
        ``auditor`` records the refusal as such). Event-loop only."""
        slot = (kind, who)
        count = self._held.get(slot, 0)
        if count >= self.caps[kind]:
            if auditor is not None:
                auditor.throttled = True
            raise TooManyRequests(
                f"this {'token' if who.startswith('token:') else 'address'} holds {count} {kind} already, the most it may "
                "hold at once; retry when one has ended",
                retry_after=RETRY_AFTER_SECONDS,
            )
        self._held[slot] = count + 1

    def release(self, kind: str, who: str, count: int = 1) -> None:
        slot = (kind, who)
        left = self._held.get(slot, 0) - count
        if left > 0:
            self._held[slot] = left
        else:
            self._held.pop(slot, None)  # nothing is kept for callers that hold nothing

    @contextmanager
    def hold(self, kind: str, who: str, auditor: Auditor | None = None) -> Iterator[None]:
        self.acquire(kind, who, auditor)
        try:
            yield
        finally:
            self.release(kind, who)


def limits_of(app: Any) -> ConcurrencyLimits:
    """The app's limits (made on first use from the container's settings)."""
    state = app.state
    limits: ConcurrencyLimits | None = getattr(state, "limits", None)
    if limits is None:
        limits = state.limits = ConcurrencyLimits.from_settings(state.container.settings)
    return limits


async def long_poll_slot(request: Request, principal: PrincipalDep, auditor: AuditorDep) -> AsyncIterator[None]:
    """A ``/watch`` request's slot, held while it runs (a FastAPI dependency: after authentication)."""
    limits, who = limits_of(request.app), caller(principal, auditor.client)
    with limits.hold(LONG_POLL, who, auditor):
        yield


LongPollSlot = Annotated[None, Depends(long_poll_slot)]


class SocketSlots:
    """What one WebSocket holds: its socket slot (its address's until it authenticates, then its token's) and its
    subscriptions. Each refusal is recorded (``429``), told to the client (``too_many_requests``, ``retry_after``)
    and, for the socket itself, ends it (close code 1013, try again later)."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.limits = limits_of(socket.websocket.app)
        self.who: str | None = None  # whose socket slot this one holds
        self.token_who: str | None = None
        self.subscriptions = 0
        self.refused = False  # the socket itself was refused (closed with 1013, try again later)

    async def _refuse(self, action: str, exc: TooManyRequests, **facts: Any) -> None:
        self.refused = action == "ws.connect"
        if await self.socket.record(action, 429, **facts):
            await self.socket.error(exc.code, exc.message, **exc.extra)

    async def connect(self) -> bool:
        """On accept, before the auth message: a slot of the client's address."""
        who = caller(None, self.socket.auditor.client)
        try:
            self.limits.acquire(WEBSOCKET, who, self.socket.auditor)
        except TooManyRequests as exc:
            await self._refuse("ws.connect", exc)
            return False
        self.who = who
        return True

    async def authenticated(self, principal: Principal) -> bool:
        """Once authenticated: the address's slot is given back, one of the token's taken (else refused)."""
        self.release_socket()
        who = caller(principal, self.socket.auditor.client)
        try:
            self.limits.acquire(WEBSOCKET, who, self.socket.auditor)
        except TooManyRequests as exc:
            await self._refuse("ws.connect", exc)
            return False
        self.who = self.token_who = who
        return True

    async def subscription(self, **facts: Any) -> bool:
        """One more subscription of the token; False when refused (recorded and answered; the socket stays)."""
        assert self.token_who is not None
        try:
            self.limits.acquire(SUBSCRIPTION, self.token_who, self.socket.auditor)
        except TooManyRequests as exc:
            await self._refuse("ws.subscribe", exc, **facts)
            return False
        self.subscriptions += 1
        return True

    def release_socket(self) -> None:
        if self.who is not None:
            self.limits.release(WEBSOCKET, self.who)
            self.who = None

    def close(self) -> None:
        self.release_socket()
        if self.subscriptions and self.token_who is not None:
            self.limits.release(SUBSCRIPTION, self.token_who, self.subscriptions)
            self.subscriptions = 0
