"""Auditing of HTTP requests: routes state what happened through an :class:`Auditor`; :func:`record` writes it.

Every request to an audited path gets one :class:`Auditor` (``scope["state"]["auditor"]``). The route (or the
fast read path, or the WebSocket handler) states its facts on it — action, key, version, target, scope, who —
so nothing re-parses a URL or a response body to find out what a request did. When a route is refused before
its body runs (a bad token, a bad scope), the facts come from the route that matched: every audited route is
named after its action, and its path parameters name the key or target.

When the store records a change's audit entry inside the commit (``ConfigService`` asks the auditor through
the ``ChangeAuditor`` port), that entry is the request's record: durable with the change, nothing more is
written. Otherwise the ASGI layer (``handlers/asgi.py``) writes the record before the response leaves:
appended for reads, durable for anything that is not a read.

>>> # auditor = Auditor.begin(scope, "r-1"); auditor.note("config.read", key="a.b", version=3)
>>> # entry = auditor.entry(200)   # → AuditEntry(action="config.read", key="a.b", version=3, status=200, ...)
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime
from typing import Any

from tessera.core.access_model import AuditEntry
from tessera.core.audit import ATTEMPT, REQUEST, PendingEntries
from tessera.core.errors import Unavailable
from tessera.core.idempotency import IdempotencyGuard
from tessera.core.model import Action, Principal, Scope, Version, utcnow
from tessera.core.tokens import TOKEN_PREFIX

logger = logging.getLogger("tessera.audit")
AUDITED_PREFIXES = ("/config", "/watch", "/ws", "/policies", "/auth", "/envs", "/diff", "/audit", "/ui")
_TOKEN_SHAPE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")  # core/tokens.py: 256 random bits, base64url
MAX_FIELD = 256  # facts taken from a refused request are not validated: they are cut here
AUDIT_WAIT_SECONDS = 10.0  # longest wait for a record before answering 503
UNDOTTED_ACTIONS = frozenset({"watch", "diff"})  # audited routes whose action has no area prefix
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COMMIT = "commit"
_AREAS = {"/policies": "policy", "/envs": "env", "/config": "config", "/auth": "auth"}  # phase of the per-key records an import writes inside each key's commit


_AUDITED_EXACT = frozenset(AUDITED_PREFIXES)
_AUDITED_BELOW = tuple(prefix + "/" for prefix in AUDITED_PREFIXES)


def audited(path: str) -> bool:
    return path in _AUDITED_EXACT or path.startswith(_AUDITED_BELOW)  # asked of every request: no loop, no concatenation


def cut(text: str | None) -> str | None:
    """A recorded fact taken from the request, bounded, with any token string in it masked (a client that pastes
    its token where an id or a key goes must not put it in the audit log)."""
    if text is None:
        return None
    text = text[: MAX_FIELD + 64]
    if TOKEN_PREFIX in text:
        text = _TOKEN_SHAPE.sub(TOKEN_PREFIX + "[redacted]", text)
    return text[:MAX_FIELD]


def outcome_of(status: int) -> str:
    if status < 400:
        return "allowed"
    if status in (401, 429):  # a 429 here replaces a 401 (brute-force damping)
        return "unauthenticated"
    if status == 403:
        return "denied"
    if status == 404:
        return "not_found"
    return "error"


def client_address(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Auditor:
    """What one request did, as its route states it; also the ``ChangeAuditor`` the config service asks."""

    __slots__ = (
        "action", "key", "version", "target", "namespace", "env", "principal", "refused_token",
        "request_id", "started", "method", "path", "client", "in_commit", "many_commits", "idempotency_guard",
        "throttled",
    )  # fmt: skip

    def __init__(self, request_id: str, method: str, path: str, client: str, started: datetime | None = None) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client = client
        self.started = started or utcnow()
        self.action: str | None = None
        self.key: str | None = None
        self.version: int | None = None
        self.target: str | None = None
        self.namespace: str | None = None
        self.env: str | None = None
        self.principal: Principal | None = None
        self.refused_token: tuple[str | None, str | None] | None = None  # (service, id) of an expired/revoked token
        self.in_commit = False  # the request's record was written inside its commit: nothing more to write
        self.many_commits = False  # an import: each key's commit gets its own record, the request one more
        self.idempotency_guard: IdempotencyGuard | None = None  # the request's Idempotency-Key claim
        self.throttled = False  # refused by a concurrency cap (its 429 is an error, not damping's unauthenticated)

    @classmethod
    def begin(cls, scope: Mapping[str, Any], request_id: str) -> Auditor:
        return cls(request_id, scope.get("method", "GET"), cut(scope.get("path", "")) or "", client_address(scope))

    def note(
        self,
        action: str | None = None,
        *,
        key: str | None = None,
        version: int | None = None,
        target: str | None = None,
        scope: Scope | None = None,
    ) -> None:
        """State facts of this request (only those given change)."""
        if action is not None:
            self.action = action
        if key is not None:
            self.key = cut(key)
        if version is not None:
            self.version = version
        if target is not None:
            self.target = cut(target)
        if scope is not None:
            self.namespace, self.env = scope.namespace, scope.env

    def note_scope(self, namespace: str | None, env: str | None) -> None:
        """A scope as requested (not yet validated: a refused one is recorded as given, cut)."""
        self.namespace = cut(namespace or "default")
        self.env = cut(env or "default")

    # ------------------------------------------------------------------ the ChangeAuditor port
    def entry_for(self, version: Version) -> AuditEntry:
        """The record written inside the commit of ``version`` (``core.ports.ChangeAuditor``)."""
        status = 201 if version.action is Action.CREATE and self.action == "config.write" else 200
        entry = self.entry(status, key=version.key, version=version.version, scope=version.scope)
        return replace(entry, phase=COMMIT) if self.many_commits else entry

    def recorded(self, entry: AuditEntry) -> None:
        if entry.phase != COMMIT:
            self.in_commit = True

    @property
    def guard(self) -> IdempotencyGuard | None:
        """The claim a commit marks. An import makes many commits: its claim is kept when its response is, and a
        retry after a crash runs the import again (which changes nothing that already landed)."""
        return None if self.many_commits else self.idempotency_guard

    # ------------------------------------------------------------------ the record
    def entry(
        self, status: int, *, key: str | None = None, version: int | None = None, scope: Scope | None = None
    ) -> AuditEntry:
        principal = self.principal
        service, token_id = (principal.service, principal.id) if principal is not None else (self.refused_token or (None, None))
        return AuditEntry.response(
            self.started,
            self.request_id,
            self.action or "unknown",
            "error" if status == 429 and self.throttled else outcome_of(status),
            status,
            service,
            token_id,
            scope.namespace if scope is not None else self.namespace,
            scope.env if scope is not None else self.env,
            key if key is not None else self.key,
            version if version is not None else (self.version if 200 <= status < 300 else None),
            self.target,
            self.client,
            self.method,
            self.path,
        )

    def attempt_entry(self) -> AuditEntry:
        """The ``phase="request"`` record of a change the store cannot record inside its commit: durable before
        the change runs, so a committed change is never without a record."""
        return replace(self.entry(0), phase=REQUEST, outcome=ATTEMPT)


def facts_from_route(auditor: Auditor, scope: Mapping[str, Any]) -> None:
    """Facts of a request refused before its route body ran: the matched route's name is its action (every
    audited route is named so), its path parameters name the key or the target."""
    if auditor.action is not None:
        return
    route = scope.get("route")
    name = getattr(route, "name", None)
    if isinstance(name, str) and ("." in name or name in UNDOTTED_ACTIONS):
        auditor.action = name
    else:  # no route matched: "<area>.unknown", the area being one of the fixed audited prefixes
        path = scope.get("path", "")
        area = next((prefix for prefix in AUDITED_PREFIXES if path == prefix or path.startswith(prefix + "/")), "/unknown")
        auditor.action = f"{_AREAS.get(area, area[1:])}.unknown"
    params = scope.get("path_params") or {}
    if "key" in params:
        auditor.key = cut(str(params["key"]))
    for target in ("name", "token_id"):
        if target in params:
            auditor.target = cut(str(params[target]))


class AuditQueue:
    """Hands records to the group-committing :class:`~tessera.core.audit.AuditLog`, one batch per event-loop turn.

    Requests answered in the same turn share one hand-over and one wake-up: at thousands of reads a second
    this is what keeps the audit log's cost a small fraction of a read.
    """

    def __init__(self, audit_log: Any) -> None:
        self.audit_log = audit_log
        # each item: [entry, future, group it was handed over in (None until then), index in that group,
        #             the status its request answers if the record is late (None: not amended)]
        self._pending: dict[bool, list[list[Any]]] = {False: [], True: []}
        self._scheduled = False

    @property
    def ready(self) -> bool:
        return bool(self.audit_log.ready)

    @property
    def failure(self) -> str | None:
        failure: str | None = self.audit_log.failure
        return failure

    async def record(self, entry: AuditEntry, durable: bool, late_status: int | None = None) -> AuditEntry:
        """Wait until ``entry`` is appended (``durable``: durable); ``Unavailable`` or ``TimeoutError`` if not.

        A cancelled request (its client went away) still has its record written: the entry is in its batch
        whatever becomes of its waiter. ``late_status``: what the caller answers when the record is too slow
        (``503``); the record is amended to say so (see :meth:`_amend`), so the audit log never shows a request
        as served that was refused. The wait is bounded by one timer per batch, not one per request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AuditEntry] = loop.create_future()
        self._enqueue(loop, durable, [entry, future, None, 0, late_status])
        return await future

    def record_then(self, entry: AuditEntry, then: Callable[[BaseException | None], None], late_status: int) -> None:
        """:meth:`record` for a read whose response is held (``local/response_hold.py``) instead of awaited:
        ``then(None)`` once ``entry`` is appended, ``then(error)`` if it cannot be (or is too slow: the record
        says ``late_status``). Called on the event loop, never before this call returns."""
        self._enqueue(asyncio.get_running_loop(), False, [entry, _Notice(then), None, 0, late_status])

    def _enqueue(self, loop: asyncio.AbstractEventLoop, durable: bool, item: list[Any]) -> None:
        """Into this turn's batch; the batch is handed over once the turn's other callbacks have run."""
        self._pending[durable].append(item)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._ship, loop)

    def _amend(self, item: list[Any], status: int) -> None:
        """The record of a request answered ``status`` because its record was late: replace it while the writer has
        not taken it; once taken (it is being written: a hash chain is never rewritten) a second record with the
        same request id follows it, saying what was answered."""
        entry, group, index = item[0], item[2], item[3]
        late = replace(entry, status=status, outcome=outcome_of(status), version=None)
        if group is None:
            item[0] = late  # not handed over yet
        elif not self.audit_log.amend(group, index, late):
            try:
                self.audit_log.submit(late, False)
            except Exception:  # noqa: BLE001 - best effort: the log is failing anyway
                logger.error("audit: the late record of request %s could not be corrected", entry.request_id)

    def _ship(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        for durable in (False, True):
            items = self._pending[durable]
            if not items:
                continue
            self._pending[durable] = []
            if not durable and self.audit_log.inline and _appended_here(self.audit_log, items):
                continue
            group = PendingEntries([item[0] for item in items])
            for index, item in enumerate(items):
                item[2], item[3] = group, index
            batch = self.audit_log.submit_batch(group, durable)
            expiry = loop.call_later(AUDIT_WAIT_SECONDS, self._expire, items)

            def resolve(done: Future[list[AuditEntry]], items: list[list[Any]] = items, expiry: asyncio.TimerHandle = expiry) -> None:
                loop.call_soon_threadsafe(_settle, items, done, expiry)

            batch.add_done_callback(resolve)

    def _expire(self, items: list[list[Any]]) -> None:
        """The batch was not taken within ``AUDIT_WAIT_SECONDS``: its waiters fail (fail closed), their records
        amended to the status they answer."""
        for item in items:
            future = item[1]
            if future.done():
                continue
            if item[4] is not None:
                self._amend(item, item[4])
            future.set_exception(TimeoutError("the audit log did not take the record in time"))
            future.add_done_callback(_consume)


def _appended_here(audit_log: Any, items: list[list[Any]]) -> bool:
    """Append a turn's records on the event loop itself (``AuditLog.append_now``: a local file only this process
    appends to) and answer their waiters; False when the file is busy (the writer thread takes them then)."""
    try:
        stored = audit_log.append_now([item[0] for item in items])
    except Exception as exc:  # noqa: BLE001 - not recorded: every waiter fails closed (503)
        error = exc if isinstance(exc, Unavailable) else Unavailable("the audit log cannot be written")
        for item in items:
            if not item[1].done():
                item[1].set_exception(error)
                item[1].add_done_callback(_consume)
        return True
    if stored is None:
        return False
    for index, item in enumerate(items):
        if not item[1].done():  # a waiter that went (cancelled) has its record written all the same
            item[1].set_result(stored[index])
    return True


def _settle(items: list[list[Any]], done: Future[list[AuditEntry]], expiry: asyncio.TimerHandle) -> None:
    expiry.cancel()
    error = done.exception()
    stored: list[AuditEntry] = [] if error is not None else done.result()
    for index, (_, future, _, _, _) in enumerate(items):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
            future.add_done_callback(_consume)  # its waiter may have gone: no "never retrieved" noise
        else:
            future.set_result(stored[index])


class _Notice:
    """The waiter of :meth:`AuditQueue.record_then`: a callback where :meth:`AuditQueue.record` has a future."""

    __slots__ = ("then", "_done")

    def __init__(self, then: Callable[[BaseException | None], None]) -> None:
        self.then = then
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, _entry: AuditEntry) -> None:
        self._done = True
        self._call(None)

    def set_exception(self, error: BaseException) -> None:
        self._done = True
        self._call(error)

    def _call(self, error: BaseException | None) -> None:
        # Called in a loop over a batch's waiters: one callback that raises must not leave the rest unanswered.
        try:
            self.then(error)
        except Exception:  # noqa: BLE001 - logged; the other waiters of the batch still get their answer
            logger.exception("audit: a held response's callback failed")

    def add_done_callback(self, _callback: Callable[[Any], None]) -> None:
        """Nothing to consume: no exception is left unretrieved."""


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
