"""Watches that cannot die unseen: a revision cursor delivered over ``/ws``, with long-poll ``/watch`` fallback.

How a watch runs:
- **Cursor.** With ``since=None`` the cursor is pinned to the store's revision when ``watch()`` is called
  (``GET /health``), so a change made right after ``watch()`` returns is delivered. Every event after the cursor
  is delivered once, in revision order; the cursor then moves to it. After any failure the watch resumes from its
  cursor on whichever node answers: nothing is skipped, nothing delivered twice.
- **Transport.** WebSocket first (``/ws``: an ``auth`` message, then ``subscribe``). A node whose ``/ws`` answers
  with plain HTTP (a proxy without WebSocket support) is watched by long poll (``GET /watch``) from then on.
- **Errors.** Every error reaches ``on_error(exc)`` with the full exception (and the bounded ``handle.errors``):
  * fatal, the watch stops (``handle.alive`` false, ``handle.error`` set, ``handle.wait()`` raises it): an answer
    that is not Tessera's (``ConfigurationError``: an HTML page, ``no_route``, another service), an auth failure
    (``Unauthenticated``, ``Forbidden``: e.g. the token revoked mid-watch), a refused subscription
    (``InvalidRequest``, ``NotFound`` for an unknown env), or an unexpected error inside the SDK;
  * passing, the watch goes on: a node down, reset or timing out (``Unavailable`` and transport errors: it moves to
    the next node with jittered backoff, at most ``MAX_BACKOFF`` seconds apart), an exception raised by the callback
    (the event counts as delivered: a poison event is not retried forever), a ``5xx``;
  * ``RevisionCompacted`` (``410``: the cursor is older than the server's retained change log): reported, then the
    watch continues from the server's current revision. Changes in between were compacted away and are not
    replayed: re-read the keys you cache when you get it (the client's own read cache is cleared).
- Without ``on_error``, errors are logged on the ``tessera.client`` logger (the callback's with its traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from tessera.client.sdk._base import USER_AGENT
from tessera.client.sdk._http import Answer, Call, NodeFailed, NodeRing
from tessera.client.sdk.errors import (
    ConfigurationError,
    InvalidRequest,
    NodeFailure,
    RevisionCompacted,
    TesseraError,
    Unavailable,
    error_for,
)
from tessera.client.sdk.store import ReadCache
from tessera.client.sdk.types import Event, Health

logger = logging.getLogger("tessera.client")
MAX_ERRORS = 100  # the error history a handle keeps (oldest dropped first)
MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0
PING_INTERVAL, PING_TIMEOUT = 5.0, 10.0
MAX_MESSAGE = 4 * 1024 * 1024  # an event holds at most one 64 KiB value; anything far larger is not Tessera  # a node that stops answering (paused, cut off) is left within ~15 s
# The status each /ws error code would have over HTTP, so both transports raise the same exceptions.
WS_STATUS = {"unauthenticated": 401, "forbidden": 403, "not_found": 404, "revision_compacted": 410,
             "too_many_requests": 429, "rate_limited": 429, "unavailable": 503, "deadline_exceeded": 503}
TRANSIENT_STATUSES = {429, 500, 502, 503, 504}


class _WatchedClient(Protocol):
    """What a watch needs of its own client, sync or asyncio (``ClientBase`` in ``_base.py`` has all of it).

    Named here, not imported: ``client.py`` and ``aio.py`` import this module, so it imports neither of them.
    """

    timeout: float
    _token: str | None
    _ring: NodeRing
    _cache: ReadCache

    def _watch_call(self, patterns: list[str], since: int | None, poll_timeout: float, scope: tuple[str, str]) -> Call: ...

    def _events(self, answer: Answer) -> tuple[int, list[Event]]: ...


class SyncWatchedClient(_WatchedClient, Protocol):
    """A sync ``tessera.Client`` as a watch sees it."""

    def _send(self, call: Call) -> Answer: ...

    def health(self) -> Health: ...

    def close(self) -> None: ...


class AsyncWatchedClient(_WatchedClient, Protocol):
    """A ``tessera.AsyncClient`` as a watch sees it."""

    async def _send(self, call: Call) -> Answer: ...

    async def health(self) -> Health: ...

    async def aclose(self) -> None: ...


EventCallback = Callable[[Event], Any]
ErrorCallback = Callable[[BaseException], Any]


class WatchStopped(Exception):
    """Internal: the handle was stopped while a transport was waiting."""


def websocket_url(node: str) -> str:
    scheme, rest = node.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"


def is_fatal(exc: BaseException) -> bool:
    """Whether retrying cannot help: the answer is not Tessera's, the token is refused, the watch is malformed."""
    if isinstance(exc, RevisionCompacted | Unavailable):
        return False
    if isinstance(exc, ConfigurationError):
        return True
    if isinstance(exc, TesseraError):
        return exc.status is None or exc.status not in TRANSIENT_STATUSES
    return not isinstance(exc, OSError | TimeoutError | ConnectionClosed | httpx.TransportError | NodeFailed)


def ws_error(message: dict[str, Any], node: str) -> TesseraError:
    code = str(message.get("code") or "unknown")
    error = {**message, "code": code, "message": message.get("message") or code}
    error.pop("type", None)
    return error_for(WS_STATUS.get(code, 400), error, node=node, request_id=None)


QUEUED_LIMIT = 1000  # messages read past a close while looking for the server's error


def error_among(messages: Sequence[str | bytes], node: str) -> TesseraError | None:
    """The server's error among the messages it sent before closing the socket.

    The server answers a refused auth or subscribe with an error message, then closes. A ``send`` of ours that
    runs after the close arrived raises ``ConnectionClosed`` while that message is still queued unread: the watch
    must report the refusal (a bad token stops it), not a node failure (which it would retry)."""
    for raw in messages:
        try:
            message = json.loads(raw)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "error":
            return ws_error(message, node)
    return None


def queued_messages(socket: Any) -> list[str | bytes]:
    """What a closed synchronous socket still holds (``recv`` hands out queued messages before it raises)."""
    messages: list[str | bytes] = []
    for _ in range(QUEUED_LIMIT):
        try:
            messages.append(socket.recv(timeout=0))
        except (ConnectionClosed, TimeoutError):
            break
    return messages


async def queued_messages_async(socket: Any) -> list[str | bytes]:
    """:func:`queued_messages` for an asyncio socket."""
    messages: list[str | bytes] = []
    for _ in range(QUEUED_LIMIT):
        try:
            messages.append(await asyncio.wait_for(socket.recv(), 0.1))
        except (ConnectionClosed, TimeoutError):
            break
    return messages


def parse_ws_message(raw: str | bytes, node: str) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"{websocket_url(node)} sent a message that is not JSON: not Tessera's /ws", node=node) from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ConfigurationError(f"{websocket_url(node)} sent a message without a type: not Tessera's /ws", node=node)
    if message["type"] == "event":
        if not isinstance(message.get("revision"), int) or not isinstance(message.get("key"), str):
            raise ConfigurationError(f"{websocket_url(node)} sent an event without revision or key", node=node)
    return message


class WatchState:
    """What a watch knows, shared by the thread and the asyncio forms: cursor, errors, transport per node."""

    def __init__(self, patterns: list[str], scope: tuple[str, str], since: int | None, poll_timeout: float) -> None:
        self.patterns = patterns
        self.scope = scope
        self.cursor = since
        self.poll_timeout = poll_timeout
        self.errors: deque[BaseException] = deque(maxlen=MAX_ERRORS)
        self.error_count = 0
        self.error: BaseException | None = None
        self.transport: str | None = None
        self.node: str | None = None
        self.delivered = 0
        self.websocket_refused: set[str] = set()  # nodes whose /ws answered plain HTTP: long poll there
        self.pending: BaseException | None = None  # an error met in watch() itself, handled by the loop
        self._backoff = MIN_BACKOFF

    def subscribe_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "keys": self.patterns, "namespace": self.scope[0], "env": self.scope[1]}
        if self.cursor is not None:
            message["since"] = self.cursor
        return message

    def accept(self, event: Event) -> bool:
        """Whether the event is new (after the cursor); if so the cursor moves to it."""
        if self.cursor is not None and event.revision <= self.cursor:
            return False
        self.cursor = event.revision
        self.delivered += 1
        return True

    def advance(self, revision: int) -> None:
        """A long poll's ``revision``: nothing matching happened up to it."""
        if self.cursor is None or revision > self.cursor:
            self.cursor = revision

    def record(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.error_count += 1

    def next_backoff(self) -> float:
        delay = random.uniform(self._backoff / 2, self._backoff)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return delay

    def reset_backoff(self) -> None:
        self._backoff = MIN_BACKOFF


def _log_unhandled(exc: BaseException, fatal: bool) -> None:
    if isinstance(exc, TesseraError | OSError | ConnectionClosed | httpx.HTTPError | NodeFailed):
        logger.warning("watch %s: %s", "stopped" if fatal else "error", exc)
    else:
        logger.error("watch %s: %s", "stopped" if fatal else "callback failed", type(exc).__name__, exc_info=exc)


class WatchHandle:
    """A running watch (a background thread). ``alive``, ``wait()``, ``stop()``, ``error``, ``errors``, ``cursor``,
    ``transport``; a context manager that stops it.

    Example::

        handle = client.watch("features.*", on_change, on_error=report)
        if not handle.alive:             # ended: not Tessera, or the token was refused
            raise handle.error
        print(handle.transport, handle.cursor, handle.errors[-3:])
        handle.stop()
    """

    def __init__(self, client: SyncWatchedClient, state: WatchState, callback: EventCallback, on_error: ErrorCallback | None) -> None:
        self._client = client  # the watch's own client (its own connections), closed when the watch ends
        self._state = state
        self._callback = callback
        self._on_error = on_error
        self._stopped = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._socket: Any = None
        self._thread = threading.Thread(target=self._run, name="tessera-watch", daemon=True)

    # ------------------------------------------------------------------ public surface
    @property
    def alive(self) -> bool:
        """True while the watch runs: false once stopped or ended by a fatal error (see ``error``)."""
        return not self._stopped.is_set() and not self._done.is_set()

    @property
    def error(self) -> BaseException | None:
        """The error that ended the watch, or ``None`` (running, or stopped by ``stop()``)."""
        return self._state.error

    @property
    def errors(self) -> list[BaseException]:
        """The latest errors, oldest first (at most ``MAX_ERRORS``; ``error_count`` counts them all)."""
        return list(self._state.errors)

    @property
    def error_count(self) -> int:
        return self._state.error_count

    @property
    def cursor(self) -> int | None:
        """The revision of the last event delivered (or the revision the watch started after)."""
        return self._state.cursor

    @property
    def transport(self) -> str | None:
        """``"websocket"`` or ``"long-poll"``: how the watch is receiving now."""
        return self._state.transport

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the watch ends; True if it ended, False if ``timeout`` passed first.

        Raises the error that ended it, if one did (``ConfigurationError``, ``Unauthenticated``, ...).

        >>> # handle.wait()  # blocks for as long as the watch runs; raises why it stopped
        """
        ended = self._done.wait(timeout)
        if ended and self._state.error is not None:
            raise self._state.error
        return ended

    def stop(self, timeout: float = 1.0) -> None:
        """Stop watching: ``alive`` is false at once and no event is delivered after this returns (except to a
        callback already running). A WebSocket closes at once; a long poll in flight cannot be interrupted from
        another thread, so the watch thread then ends when that poll returns (within ``poll_timeout``), delivering
        nothing; ``timeout`` bounds how long ``stop`` waits for it.

        >>> # handle.stop()
        """
        self._stopped.set()
        with self._lock:
            socket = self._socket
        if socket is not None:
            with contextlib.suppress(Exception):
                socket.close()
        self._client.close()  # ends a long poll in flight
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WatchHandle(patterns={self._state.patterns!r}, alive={self.alive}, cursor={self.cursor})"

    # ------------------------------------------------------------------ the thread
    def _start(self) -> WatchHandle:
        self._thread.start()
        return self

    def _run(self) -> None:
        state = self._state
        try:
            while not self._stopped.is_set():
                try:
                    if state.pending is not None:
                        pending, state.pending = state.pending, None
                        raise pending
                    if state.cursor is None:
                        state.advance(self._client.health().revision)
                    node = next(self._client._ring.order())
                    if node in state.websocket_refused:
                        self._poll()
                    else:
                        self._websocket(node)
                except WatchStopped:
                    return
                except BaseException as exc:  # noqa: BLE001 - every failure is reported, none ends the thread unseen
                    if self._stopped.is_set():
                        return
                    if not self._handle(exc):
                        return
        finally:
            self._done.set()
            self._client.close()

    def _handle(self, exc: BaseException) -> bool:
        """Report ``exc``; False when the watch must stop."""
        state = self._state
        if isinstance(exc, NodeFailed):
            exc = Unavailable([exc.failure])
        if isinstance(exc, RevisionCompacted):
            self._report(exc, fatal=False)
            state.cursor = exc.current_revision if exc.current_revision is not None else None
            self._client._cache.clear()
            return True
        fatal = is_fatal(exc)
        if fatal:
            state.error = exc
        self._report(exc, fatal=fatal)
        if fatal:
            return False
        if state.node:
            self._client._ring.failed(state.node)
        self._stopped.wait(state.next_backoff())
        return True

    def _report(self, exc: BaseException, *, fatal: bool) -> None:
        self._state.record(exc)
        if self._on_error is None:
            _log_unhandled(exc, fatal)
            return
        try:
            self._on_error(exc)
        except Exception as failure:  # noqa: BLE001 - a failing error handler must not end the watch
            logger.error("watch on_error raised %s", type(failure).__name__, exc_info=failure)

    def _deliver(self, event: Event) -> None:
        if self._stopped.is_set():
            raise WatchStopped
        if not self._state.accept(event):
            return
        try:
            self._callback(event)
        except Exception as exc:  # noqa: BLE001 - reported with its traceback; the watch goes on
            self._report(exc, fatal=False)

    def _websocket(self, node: str) -> None:
        from websockets.sync.client import connect

        state = self._state
        state.node = node
        try:
            socket = connect(websocket_url(node), open_timeout=self._client.timeout, ping_interval=PING_INTERVAL,
                             ping_timeout=PING_TIMEOUT, close_timeout=1, max_size=MAX_MESSAGE,
                             additional_headers={"User-Agent": USER_AGENT})
        except (InvalidStatus, InvalidURI, InvalidHandshake) as exc:
            # An HTTP answer to the upgrade (a proxy without WebSocket support, or not Tessera at all): long poll
            # on this node from now on; its answer tells which.
            logger.info("watch: %s refused the WebSocket upgrade (%s); using long poll", node, exc)
            state.websocket_refused.add(node)
            return
        except (OSError, TimeoutError) as exc:
            raise Unavailable([NodeFailure(node, f"WebSocket: {type(exc).__name__}: {exc}")]) from exc
        with self._lock:
            self._socket = socket
        if self._stopped.is_set():
            socket.close()
            raise WatchStopped
        try:
            socket.send(json.dumps({"type": "auth", "token": self._client._token or ""}))
            socket.send(json.dumps(state.subscribe_message()))
            state.transport = "websocket"
            for raw in socket:
                message = parse_ws_message(raw, node)
                if message["type"] == "event":
                    self._deliver(Event._from_body(message))
                    state.reset_backoff()
                elif message["type"] == "error":
                    raise ws_error(message, node)
            if self._stopped.is_set():
                raise WatchStopped
            raise Unavailable([NodeFailure(node, "the WebSocket was closed by the server")])
        except ConnectionClosed as exc:
            if self._stopped.is_set():
                raise WatchStopped from None
            refusal = error_among(queued_messages(socket), node)
            if refusal is not None:
                raise refusal from exc
            raise Unavailable([NodeFailure(node, f"WebSocket closed ({exc})")]) from exc
        finally:
            with self._lock:
                self._socket = None
            with contextlib.suppress(Exception):
                socket.close()

    def _poll(self) -> None:
        """Long polls until a failure, or until the answering node is one to try a WebSocket on again."""
        state = self._state
        state.transport = "long-poll"
        while not self._stopped.is_set():
            call = self._client._watch_call(state.patterns, state.cursor, state.poll_timeout, state.scope)
            try:
                answer = self._client._send(call)
            except (RuntimeError, httpx.HTTPError):
                if self._stopped.is_set():
                    raise WatchStopped from None  # stop() closed the connection under the poll
                raise
            state.node = answer.node
            revision, events = self._client._events(answer)
            for event in events:
                self._deliver(event)
            state.advance(revision)
            state.reset_backoff()
            if answer.node not in state.websocket_refused:
                return  # failed over to a node that may speak WebSocket


class AsyncWatchHandle:
    """A running watch in the asyncio form (a task): the same properties as :class:`WatchHandle`, with
    ``await wait()`` and ``await stop()``.

    Example::

        handle = await client.watch("features.*", on_change)
        ...
        await handle.stop()
    """

    def __init__(self, client: AsyncWatchedClient, state: WatchState, callback: Callable[[Event], Any],
                 on_error: Callable[[BaseException], Any] | None) -> None:
        self._client = client
        self._state = state
        self._callback = callback
        self._on_error = on_error
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """True while the watch runs: false once stopped or ended by a fatal error (see ``error``)."""
        return not self._stopped and self._task is not None and not self._task.done()

    @property
    def error(self) -> BaseException | None:
        return self._state.error

    @property
    def errors(self) -> list[BaseException]:
        return list(self._state.errors)

    @property
    def error_count(self) -> int:
        return self._state.error_count

    @property
    def cursor(self) -> int | None:
        return self._state.cursor

    @property
    def transport(self) -> str | None:
        return self._state.transport

    def _start(self) -> AsyncWatchHandle:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the watch ends; True if it ended, False on ``timeout``. Raises the error that ended it.

        Example::

            await handle.wait()
        """
        assert self._task is not None
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        if done and self._state.error is not None:
            raise self._state.error
        return bool(done)

    async def stop(self) -> None:
        """Stop watching (cancels the watch task and closes its connections).

        Example::

            await handle.stop()
        """
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._client.aclose()

    async def __aenter__(self) -> AsyncWatchHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"AsyncWatchHandle(patterns={self._state.patterns!r}, alive={self.alive}, cursor={self.cursor})"

    async def _run(self) -> None:
        state = self._state
        try:
            while not self._stopped:
                try:
                    if state.pending is not None:
                        pending, state.pending = state.pending, None
                        raise pending
                    if state.cursor is None:
                        state.advance((await self._client.health()).revision)
                    node = next(self._client._ring.order())
                    if node in state.websocket_refused:
                        await self._poll()
                    else:
                        await self._websocket(node)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - every failure is reported, none ends the task unseen
                    if self._stopped or not await self._handle(exc):
                        return
        finally:
            await self._client.aclose()

    async def _handle(self, exc: BaseException) -> bool:
        state = self._state
        if isinstance(exc, NodeFailed):
            exc = Unavailable([exc.failure])
        if isinstance(exc, RevisionCompacted):
            await self._report(exc, fatal=False)
            state.cursor = exc.current_revision
            self._client._cache.clear()
            return True
        fatal = is_fatal(exc)
        if fatal:
            state.error = exc
        await self._report(exc, fatal=fatal)
        if fatal:
            return False
        if state.node:
            self._client._ring.failed(state.node)
        await asyncio.sleep(state.next_backoff())
        return True

    async def _report(self, exc: BaseException, *, fatal: bool) -> None:
        self._state.record(exc)
        if self._on_error is None:
            _log_unhandled(exc, fatal)
            return
        try:
            result = self._on_error(exc)
            if inspect.isawaitable(result):
                await result
        except Exception as failure:  # noqa: BLE001
            logger.error("watch on_error raised %s", type(failure).__name__, exc_info=failure)

    async def _deliver(self, event: Event) -> None:
        if not self._state.accept(event):
            return
        try:
            result = self._callback(event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # noqa: BLE001
            await self._report(exc, fatal=False)

    async def _websocket(self, node: str) -> None:
        from websockets.asyncio.client import connect

        state = self._state
        state.node = node
        try:
            socket = await connect(websocket_url(node), open_timeout=self._client.timeout, ping_interval=PING_INTERVAL,
                                   ping_timeout=PING_TIMEOUT, close_timeout=1, max_size=MAX_MESSAGE,
                                   additional_headers={"User-Agent": USER_AGENT})
        except (InvalidStatus, InvalidURI, InvalidHandshake) as exc:
            logger.info("watch: %s refused the WebSocket upgrade (%s); using long poll", node, exc)
            state.websocket_refused.add(node)
            return
        except (OSError, TimeoutError) as exc:
            raise Unavailable([NodeFailure(node, f"WebSocket: {type(exc).__name__}: {exc}")]) from exc
        try:
            await socket.send(json.dumps({"type": "auth", "token": self._client._token or ""}))
            await socket.send(json.dumps(state.subscribe_message()))
            state.transport = "websocket"
            async for raw in socket:
                message = parse_ws_message(raw, node)
                if message["type"] == "event":
                    await self._deliver(Event._from_body(message))
                    state.reset_backoff()
                elif message["type"] == "error":
                    raise ws_error(message, node)
            raise Unavailable([NodeFailure(node, "the WebSocket was closed by the server")])
        except ConnectionClosed as exc:
            refusal = error_among(await queued_messages_async(socket), node)
            if refusal is not None:
                raise refusal from exc
            raise Unavailable([NodeFailure(node, f"WebSocket closed ({exc})")]) from exc
        finally:
            with contextlib.suppress(Exception):
                await socket.close()

    async def _poll(self) -> None:
        state = self._state
        state.transport = "long-poll"
        while not self._stopped:
            call = self._client._watch_call(state.patterns, state.cursor, state.poll_timeout, state.scope)
            answer = await self._client._send(call)
            state.node = answer.node
            revision, events = self._client._events(answer)
            for event in events:
                await self._deliver(event)
            state.advance(revision)
            state.reset_backoff()
            if answer.node not in state.websocket_refused:
                return


def start_watch(client: Any, pattern: str | Sequence[str], callback: Callable[..., Any], since: int | None,
                on_error: Callable[..., Any] | None, poll_timeout: float, scope: tuple[str, str]) -> WatchState:
    """Shared argument checks for both ``watch`` methods."""
    from tessera.client.sdk._base import patterns_of

    if not callable(callback):
        raise ConfigurationError("watch needs a callback: watch(pattern, callback)")
    if on_error is not None and not callable(on_error):
        raise ConfigurationError("on_error must be callable")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise InvalidRequest("since must be a revision (an integer >= 0)")
    return WatchState(patterns_of(pattern), scope, since, poll_timeout)

