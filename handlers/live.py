"""Live reload on AWS: the contract's ``/ws`` over an API Gateway WebSocket API, and the notifier behind it.

API Gateway holds the sockets; no Lambda runs while nobody sends or changes anything. One function (``LiveFunction``
in ``infra/template.yaml``) serves both sides through :class:`Live`:

- **WebSocket routes** (``route``): ``$connect`` accepts; the first message ``{"type": "auth", "token": ...}``
  authenticates (recorded as ``ws.connect``: 101, or the refusal, then the socket is closed); each
  ``{"type": "subscribe", ...}`` is validated exactly as ``/ws`` does, recorded as ``ws.subscribe``, stored, and its
  backlog (``since``) posted at once; ``{"type": "ping"}`` answers ``pong`` (API Gateway closes a socket idle for
  10 minutes); ``$disconnect`` forgets the connection.
- **The notifier** (``notify``), fed by the table's stream (filtered to change-log inserts): stream records are
  ordered per item only, so a batch is a wake-up, nothing more. It reads the change log by revision, finds the
  subscriptions of the namespaces that changed, and delivers each under its lease (``SocketStore.acquire``): the
  events after the subscription's cursor that its token may read, in revision order, values of secrets left out
  (a ``Watcher`` per subscription, as ``/ws`` uses), posted with ``PostToConnection``, then the cursor stored.
  A token revoked or expired gets an error and its socket closed instead; a client gone (410) is forgotten.

Whoever holds a subscription's lease re-reads the change log after releasing it (another batch may have passed it
by meanwhile), so every change reaches every subscriber, once, in revision order; a delivery that fails for a
transient reason fails the batch, and Lambda retries it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from tessera.core.backends.aws.items import CHANGES_PK
from tessera.core.backends.aws.sockets import ConnectionPoster, Gone, SocketStore, Subscription
from tessera.core.backends.factory import Container
from tessera.core.errors import TesseraError, Unauthenticated, Unavailable
from tessera.core.model import Change, Scope, utcnow
from tessera.core.policy import compile_path
from tessera.core.tokens import hash_token
from tessera.core.watch import BATCH, MAX_SUBSCRIPTIONS_PER_SOCKET, Watcher, parse_subscription
from tessera.handlers.auditing import Auditor
from tessera.handlers.render import dumps

logger = logging.getLogger("tessera")
ROUNDS = 5  # re-reads of the change log per invocation after delivering (what arrived meanwhile)
POLLS = 20  # change-log pages one delivery reads at most (20,000 revisions)
BUSY_PAUSE_SECONDS = 0.5  # before one more try at subscriptions another delivery held
CATCH_UP_LAG = 1000  # a subscription this far behind moves its cursor even when nothing in between was for it
OK = {"statusCode": 200}


class Live:
    """The WebSocket routes and the notifier of one Lambda container (or one test)."""

    def __init__(self, container: Container, sockets: SocketStore, poster: Callable[[str], ConnectionPoster],
                 endpoint: str | None = None) -> None:  # fmt: skip
        self.container = container
        self.service = container.service
        self.sockets = sockets
        self._poster = poster
        self.endpoint = endpoint  # the Management API's URL; else from each WebSocket event
        self._posters: dict[str, ConnectionPoster] = {}

    def poster(self, context: dict[str, Any] | None = None) -> ConnectionPoster:
        endpoint = self.endpoint
        if endpoint is None and context is not None:
            endpoint = f"https://{context['domainName']}/{context['stage']}"
        if endpoint is None:
            raise Unavailable("the WebSocket API's endpoint is not configured (TESSERA_WS_ENDPOINT)")
        poster = self._posters.get(endpoint)
        if poster is None:
            poster = self._posters[endpoint] = self._poster(endpoint)
        return poster

    # ------------------------------------------------------------------ the WebSocket API's routes
    def route(self, event: dict[str, Any]) -> dict[str, Any]:
        context = event["requestContext"]
        kind, connection = context.get("eventType"), context["connectionId"]
        if kind == "CONNECT":
            return OK  # the first message authenticates (as /ws)
        if kind == "DISCONNECT":
            self.sockets.close(connection)
            return OK
        socket = _Socket(self, context)
        try:
            message = json.loads(event.get("body") or "")
        except ValueError:
            message = None
        if not isinstance(message, dict):
            socket.error("invalid_request", "messages must be JSON objects (text frames)")
        elif message.get("type") == "auth":
            socket.authenticate(message)
        elif message.get("type") == "subscribe":
            socket.subscribe(message)
        elif message.get("type") == "ping":
            socket.send({"type": "pong"})
        else:
            socket.error("invalid_request", "expected {\"type\": \"subscribe\", ...}")
        return OK

    # ------------------------------------------------------------------ the notifier
    def notify(self, event: dict[str, Any]) -> dict[str, Any]:
        """A batch of stream records: deliver what the change log holds past them to everyone concerned."""
        revisions = [int(keys["SK"]["S"]) for keys in _keys(event) if keys.get("PK", {}).get("S") == CHANGES_PK]
        if not revisions:
            return {"delivered": 0}
        return {"delivered": self.deliver_from(min(revisions) - 1)}

    def deliver_from(self, after: int, only: Iterable[Subscription] | None = None, poster: ConnectionPoster | None = None) -> int:
        """Deliver the changes after revision ``after`` (and whatever lands meanwhile) to the subscriptions of the
        namespaces they touch, or to ``only``; the number of deliveries made."""
        feed = self.service.feed
        feed.start_at(after)
        poster = poster or self.poster()
        delivered, seen, busy = 0, after, {}
        for _ in range(ROUNDS):
            feed.refresh()
            changes = self._changes_after(seen)
            if not changes:
                break
            head = changes[-1].revision
            if only is not None:
                due = [sub for sub in only if sub.cursor < head]
            else:
                due = [sub for namespace in sorted({c.scope.namespace for c in changes})
                       for sub in self.sockets.subscriptions(namespace) if self._due(sub, changes, head)]  # fmt: skip
            outcomes = list(self.container.executor.map(lambda sub: self._attempt(sub, poster), due))
            failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
            if failures:
                raise failures[0]  # Lambda retries the batch; what was delivered is not delivered again
            busy.update({(sub.pk, sub.sk): sub for sub, outcome in zip(due, outcomes, strict=True) if outcome is False})
            delivered += len(due)
            seen = head
        if busy:
            # Another delivery held these: it re-reads the change log once it is done, and so does this one, once,
            # after a pause (in case the other ran out of rounds just as this change came in).
            time.sleep(BUSY_PAUSE_SECONDS)
            for sub in busy.values():
                if self._attempt(sub, poster) is False:
                    logger.info("a WebSocket subscription stayed busy; its holder delivers what it finds")
        return delivered

    def _changes_after(self, revision: int) -> list[Change]:
        items = self.service.feed.after(revision)
        if items is not None:
            return [item.change for item in items]
        return self.service.store.changes_since(revision, BATCH)

    def _due(self, sub: Subscription, changes: list[Change], head: int) -> bool:
        """Whether anything in ``changes`` may be for this subscription (its policy is checked when delivering)."""
        if sub.cursor >= head:
            return False
        if head - sub.cursor > CATCH_UP_LAG:
            return True
        try:
            envs = set(self.service.env_chain(sub.env))
        except TesseraError:
            return True  # the delivery reports it
        matchers = [compile_path(pattern) for pattern in sub.keys]
        return any(change.revision > sub.cursor and change.scope.namespace == sub.namespace and change.scope.env in envs
                   and any(match(change.key) for match in matchers) for change in changes)  # fmt: skip

    def _attempt(self, sub: Subscription, poster: ConnectionPoster) -> Exception | bool:
        """``deliver``'s answer, or the exception it raised (collected: the batch fails and is retried)."""
        try:
            return self.deliver(sub, poster)
        except Exception as exc:  # noqa: BLE001
            logger.error("delivery to a WebSocket subscription failed: %s", type(exc).__name__)
            return exc

    def deliver(self, sub: Subscription, poster: ConnectionPoster) -> bool:
        """Under the subscription's lease: post its events after its cursor, in order, then store the cursor.
        False if another delivery holds the lease (or the subscription has gone)."""
        held = self.sockets.acquire(sub)
        if held is None:
            return False  # another delivery holds it; it re-reads the change log after releasing
        cursor = held.cursor
        try:
            principal = self.container.authenticator.authenticate_digest(held.token_hash)
            watcher = Watcher(self.service, principal, Scope(held.namespace, held.env), list(held.keys), since=held.cursor,
                              check_retained=False)  # fmt: skip
            for _ in range(POLLS):
                events = watcher.poll()
                for event in events:
                    poster.post(held.connection, _message({"type": "event", **event.as_dict()}))
                    cursor = event.change.revision
                if not events:
                    break
            cursor = max(cursor, watcher.cursor)
        except Gone:
            self.sockets.close(held.connection)
            return True
        except Unauthenticated as exc:  # revoked or expired since it subscribed: no more events, the socket closes
            _refuse(poster, held.connection, exc)
            self.sockets.close(held.connection)
            return True
        except Unavailable:
            self.sockets.release(held, cursor)
            raise
        except TesseraError as exc:  # the change log moved past it (410), its environment went: this subscription ends
            try:
                poster.post(held.connection, _message({"type": "error", "code": exc.code, "message": exc.message, **exc.extra}))
            except Gone:
                pass
            self.sockets.drop(held)
            return True
        self.sockets.release(held, cursor)
        return True


class _Socket:
    """One message of one connection: the audit facts, replies through the Management API."""

    def __init__(self, live: Live, context: dict[str, Any]) -> None:
        self.live = live
        self.container = live.container
        self.connection = context["connectionId"]
        self.poster = live.poster(context)
        client = str((context.get("identity") or {}).get("sourceIp") or "unknown")
        self.auditor = Auditor(str(context.get("requestId") or uuid.uuid4().hex), "WS", "/ws", client)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.poster.post(self.connection, _message(message))
        except Gone:
            self.live.sockets.close(self.connection)

    def error(self, code: str, message: str, **extra: Any) -> None:
        self.send({"type": "error", "code": code, "message": message, **extra})

    def close(self) -> None:
        self.poster.close(self.connection)
        self.live.sockets.close(self.connection)

    def record(self, action: str, status: int, **facts: Any) -> bool:
        """The message's audit record, written before anything follows from it; fail-closed."""
        self.auditor.note(action, **facts)
        entry = replace(self.auditor.entry(status), ts=utcnow())
        try:
            self.container.access.audit_log.record(entry, durable=True)
            return True
        except Exception:  # noqa: BLE001 - a failed or too slow write closes the socket
            logger.error("audit write failed; closing a websocket")
            self.error("unavailable", "the audit log cannot be written")
            self.close()
            return False

    def refuse(self, status: int, code: str, message: str, **extra: Any) -> None:
        if self.record("ws.connect", status):
            self.error(code, message, **extra)
            self.close()

    def authenticate(self, message: dict[str, Any]) -> None:
        if self.live.sockets.connection(self.connection) is not None:
            self.error("invalid_request", "expected {\"type\": \"subscribe\", ...}")
            return
        token = message.get("token")
        if not isinstance(token, str) or not token:
            self.refuse(401, "unauthenticated", "the first message must be {\"type\": \"auth\", \"token\": ...}")
            return
        authenticator, damper = self.container.authenticator, self.container.access.damper
        try:
            self.auditor.principal = authenticator.authenticate(token)
        except TesseraError as exc:
            client = self.auditor.client
            if token.strip() and exc.status == 401 and damper.failure(client):
                self.refuse(429, "rate_limited", "too many failed authentications from this address; retry later",
                            retry_after=damper.retry_after(client))  # fmt: skip
                return
            record = authenticator.identify(token) if exc.status == 401 else None
            if record is not None:
                self.auditor.refused_token = (record.service, record.id)
            self.refuse(exc.status, exc.code, exc.message)
            return
        if self.record("ws.connect", 101):
            self.live.sockets.open(self.connection, hash_token(token))

    def subscribe(self, message: dict[str, Any]) -> None:
        connection = self.live.sockets.connection(self.connection)
        if connection is None:
            self.refuse(401, "unauthenticated", "the first message must be {\"type\": \"auth\", \"token\": ...}")
            return
        try:
            self.auditor.principal = self.container.authenticator.authenticate_digest(connection.token_hash)
        except TesseraError as exc:
            self.error(exc.code, exc.message)
            self.close()
            return
        keys = message.get("keys")
        target = ",".join(str(k) for k in keys) if isinstance(keys, list) else None
        self.auditor.note_scope(str(message.get("namespace") or "default"), str(message.get("env") or "default"))
        try:
            asked = parse_subscription(message, connection.subscriptions)
            scope, patterns = asked.scope, asked.patterns
            watcher = Watcher(self.live.service, self.auditor.principal, scope, patterns, asked.since)
        except TesseraError as exc:
            if self.record("ws.subscribe", exc.status, target=target):
                self.error(exc.code, exc.message, **exc.extra)
            return
        if not self.record("ws.subscribe", 200, target=target):
            return
        sub = self.live.sockets.add_subscription(self.connection, connection.token_hash, scope.namespace, scope.env,
                                                 patterns, watcher.cursor, MAX_SUBSCRIPTIONS_PER_SOCKET)  # fmt: skip
        if sub is None:
            self.error("invalid_request", f"at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket")
            return
        # Its backlog now (``since``), and whatever the notifier could not give it while this held its lease.
        self.live.deliver_from(sub.cursor, only=[sub], poster=self.poster)


def _message(body: dict[str, Any]) -> bytes:
    return dumps(body)


def _refuse(poster: ConnectionPoster, connection: str, exc: TesseraError) -> None:
    try:
        poster.post(connection, _message({"type": "error", "code": exc.code, "message": exc.message}))
    except Gone:
        return
    poster.close(connection)


def _keys(event: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for record in event.get("Records") or []:
        if record.get("eventSource") == "aws:dynamodb" and record.get("eventName") in ("INSERT", "MODIFY"):
            yield record.get("dynamodb", {}).get("Keys", {})


def for_container(container: Container, endpoint: str | None = None) -> Live:
    """The :class:`Live` of a container built by the composition root, on its table and clients."""
    from tessera.core.backends.aws import AwsStore

    store = container.store
    if not isinstance(store, AwsStore):
        raise Unavailable("WebSocket subscriptions on API Gateway need the aws backend")
    region = container.settings.region
    sockets = SocketStore(store.db)
    return Live(container, sockets, lambda url: ConnectionPoster.create(url, region, store.calls), endpoint)
