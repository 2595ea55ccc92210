"""Watching: a watcher is a revision cursor over the change log (etcd's ``minRev``), filtered per caller.

``Watcher.poll`` reads changes after the cursor, keeps those the caller may see, and advances the cursor
past everything it examined, so nothing is skipped and nothing is delivered twice.

One :class:`ChangeFeed` per process reads the change log for everyone (etcd's watchable store): the recent
changes, with the values of plain keys decrypted once, live in memory, and a watcher whose cursor is within
them filters them there — 10,000 watchers woken by one write cost 10,000 in-memory filters, not 10,000 store
reads. A cursor older than the feed reads the store as before. The feed learns of commits on this node at once
(the commit path refreshes it and :class:`ChangeNotifier` wakes waiters); commits of other processes or nodes
are found by one cheap check of the store's revision per process every ``FeedPoller`` interval while anyone waits.

>>> # watcher = Watcher(service, principal, Scope("default", "prod"), ["auth.*"], since=41)
>>> # events = watcher.poll()    # → [WatchEvent(...)], watcher.cursor advanced
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tessera.core.errors import InvalidRequest, RevisionCompacted, TesseraError
from tessera.core.model import Action, Change, Principal, Scope, Version, parse_scope
from tessera.core.policy import compile_path
from tessera.core.ports import VersionStore

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 60.0
MAX_SUBSCRIPTIONS_PER_SOCKET = 64
POLL_INTERVAL = 0.5  # longest sleep of a waiter between checks of the feed (and of its token)
BATCH = 1000
FEED_CHANGES = 4096  # recent changes kept in memory
FEED_VALUE_BYTES = 16 * 1024 * 1024  # and at most this much of their values


class WatchedService(Protocol):
    """What watching needs of the config service (``core/service.py``'s ``ConfigService`` is one).

    Named here, not imported, so ``core.service`` (which builds the feed and the notifier) depends on this
    module and not the other way round.
    """

    store: VersionStore
    feed: ChangeFeed
    notifier: ChangeNotifier

    def can(self, principal: Principal, capability: str, scope: Scope, key: str) -> bool: ...

    def value_of(self, version: Version) -> Any: ...

    def env_chain(self, env: str) -> list[str]: ...


class Interest:
    """What a waiter waits for: changes in one namespace, in any of some environments, to keys matching some
    patterns. A commit wakes only the waiters it concerns (may they read it is the watcher's own check)."""

    __slots__ = ("namespace", "envs", "matchers", "key")

    def __init__(self, namespace: str, envs: Iterable[str], matchers: Sequence[Callable[[str], bool]]) -> None:
        self.namespace = namespace
        self.envs = frozenset(envs)
        self.matchers = tuple(matchers)
        # Equal for watchers of the same patterns (compiled once each: ``compile_path`` is cached), so a wake-up
        # decides once for all of them.
        self.key = (namespace, self.envs, self.matchers)

    def concerns(self, change: Change) -> bool:
        return (
            change.scope.namespace == self.namespace
            and change.scope.env in self.envs
            and any(match(change.key) for match in self.matchers)
        )


class _Waiter:
    __slots__ = ("event", "interest")

    def __init__(self, event: asyncio.Event, interest: Interest | None) -> None:
        self.event = event
        self.interest = interest


class ChangeNotifier:
    """Wakes asyncio waiters (on any event loop) when this process learns of committed changes.

    ``generation`` counts notifications: a waiter passes the generation it saw before it last read the change
    log, so a commit that lands between that read and the wait is not slept through. A notification that names
    its changes wakes only the waiters whose :class:`Interest` they concern; one without (or a waiter without an
    interest) wakes everyone. Waking costs one ``call_soon_threadsafe`` per event loop, not one per waiter:
    10,000 parked watchers are filtered and woken in one pass on their loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[asyncio.AbstractEventLoop, set[_Waiter]] = {}
        self._count = 0
        self.generation = 0

    @property
    def waiting(self) -> int:
        return self._count

    def notify(self, changes: Sequence[Change] | None = None) -> None:
        with self._lock:
            self.generation += 1
            by_loop = [(loop, list(waiters)) for loop, waiters in self._waiters.items() if waiters]
        for loop, waiters in by_loop:
            try:
                loop.call_soon_threadsafe(_wake, waiters, changes)
            except RuntimeError:  # the loop has closed: its waiters are gone
                with self._lock:
                    self._count -= len(self._waiters.pop(loop, ()))

    async def wait(
        self,
        timeout: float | None,
        seen_generation: int | None = None,
        interest: Interest | None = None,
        event: asyncio.Event | None = None,
    ) -> None:
        """Return when a change that concerns ``interest`` is committed (or anything was, since
        ``seen_generation``), when ``event`` is set by someone else, or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(event or asyncio.Event(), interest)
        with self._lock:
            if seen_generation is not None and self.generation != seen_generation:
                return
            self._waiters.setdefault(loop, set()).add(waiter)
            self._count += 1
        # A timer that sets the event, not ``asyncio.wait_for``: before Python 3.12 that is a task of its own per
        # wait and one more hand-over when it ends, 10,000 of each when one write releases 10,000 parked watchers.
        timer = loop.call_later(timeout, waiter.event.set) if timeout is not None else None
        try:
            await waiter.event.wait()
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                waiters = self._waiters.get(loop)
                if waiters is not None and waiter in waiters:
                    waiters.discard(waiter)
                    self._count -= 1
                    if not waiters:
                        del self._waiters[loop]


def _wake(waiters: list[_Waiter], changes: Sequence[Change] | None) -> None:
    decided: dict[tuple, bool] = {}  # by Interest.key: 10,000 watchers of one key are one decision
    for waiter in waiters:
        interest = waiter.interest
        if changes is None or interest is None:
            waiter.event.set()
            continue
        concerned = decided.get(interest.key)
        if concerned is None:
            concerned = decided[interest.key] = any(interest.concerns(change) for change in changes)
        if concerned:
            waiter.event.set()


@dataclass(frozen=True)
class FeedItem:
    change: Change
    value: Any = None
    has_value: bool = False


class ChangeFeed:
    """The recent tail of the change log, in memory, shared by every watcher of this process."""

    def __init__(self, service: WatchedService, max_changes: int = FEED_CHANGES, max_value_bytes: int = FEED_VALUE_BYTES) -> None:
        self.service = service
        self.max_changes = max_changes
        self.max_value_bytes = max_value_bytes
        self._lock = threading.Lock()
        self._items: list[FeedItem] = []
        self._revisions: list[int] = []
        self._value_bytes: list[int] = []
        self._bytes = 0
        self.head: int | None = None  # the highest revision read into the feed (None: not started)

    def start(self) -> None:
        """Begin at the store's current revision (earlier changes are read from the store when asked for)."""
        with self._lock:
            if self.head is None:
                self.head = self.service.store.current_revision()

    def start_at(self, revision: int) -> None:
        """Begin right after ``revision`` if not started yet (a notifier about to deliver from there)."""
        with self._lock:
            if self.head is None:
                self.head = revision

    def refresh(self) -> list[Change]:
        """Read what the store committed after ``head`` into the feed; the changes that arrived (oldest first)."""
        if self.head is None:
            return []
        with self._lock:
            head = self.head
            assert head is not None
            changes = self.service.store.changes_since(head, BATCH)
            if changes and changes[0].revision > head + 1:
                # The store compacted past our head (a long pause): restart from here; older cursors go to the store.
                self._items, self._revisions, self._value_bytes, self._bytes = [], [], [], 0
            for change in changes:
                item = self._item(change)
                size = len(str(item.value)) if item.has_value else 0
                self._items.append(item)
                self._revisions.append(change.revision)
                self._value_bytes.append(size)
                self._bytes += size
                self.head = change.revision
            excess = max(0, len(self._items) - self.max_changes)
            while excess < len(self._items) - 1 and self._bytes - sum(self._value_bytes[:excess]) > self.max_value_bytes:
                excess += 1
            if excess:
                self._bytes -= sum(self._value_bytes[:excess])
                del self._items[:excess], self._revisions[:excess], self._value_bytes[:excess]
            return changes

    def _item(self, change: Change) -> FeedItem:
        if change.action is Action.DELETE or change.secret:
            return FeedItem(change)
        try:
            version = self.service.store.get_version(change.scope, change.key, change.version)
            if version is None:
                return FeedItem(change)
            return FeedItem(change, self.service.value_of(version), True)
        except TesseraError:
            # A value that cannot be read (tampered with, its key retired) must not stop every watcher: its event
            # goes out without a value, like a secret's; reading the key itself reports the problem.
            return FeedItem(change)

    def after(self, cursor: int) -> list[FeedItem] | None:
        """The feed's items after ``cursor``, or None when the feed does not reach back that far."""
        with self._lock:
            if self.head is None or not self._revisions or cursor + 1 < self._revisions[0]:
                if self.head is not None and cursor >= self.head:
                    return []
                return None
            start = bisect.bisect_right(self._revisions, cursor)
            return self._items[start : start + BATCH]


@dataclass(frozen=True)
class WatchEvent:
    change: Change
    value: Any = None
    has_value: bool = False

    def as_dict(self) -> dict[str, Any]:
        change = self.change
        body: dict[str, Any] = {
            "revision": change.revision,
            "key": change.key,
            "version": change.version,
            "action": change.action.value,
            "namespace": change.scope.namespace,
            "env": change.scope.env,
            "secret": change.secret,
        }
        if self.has_value and not change.secret:
            body["value"] = self.value
        return body


def parse_patterns(raw: str | Sequence[str] | None) -> list[str]:
    if raw is None or raw == "":
        return ["*"]
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    if not all(isinstance(item, str) for item in items):
        raise InvalidRequest("keys must be a list of key patterns")
    patterns = [item.strip(" ") for item in items if item.strip(" ")]  # spaces after commas; nothing else
    return patterns or ["*"]


@dataclass(frozen=True)
class Subscription:
    """A ``{"type": "subscribe", ...}`` message of the ``/ws`` protocol, validated."""

    scope: Scope
    patterns: list[str]
    since: int | None


def parse_subscription(message: Mapping[str, Any], subscriptions: int) -> Subscription:
    """Validate a subscribe message for a socket that holds ``subscriptions`` already (the same rules on the
    server's ``/ws`` and on AWS's WebSocket API); ``InvalidRequest`` names what is wrong."""
    if subscriptions >= MAX_SUBSCRIPTIONS_PER_SOCKET:
        raise InvalidRequest(f"at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket")
    scope = parse_scope(message.get("namespace"), message.get("env"))
    since = message.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
        raise InvalidRequest("since must be an integer revision")
    keys = message.get("keys")
    if keys is not None and not isinstance(keys, list):
        raise InvalidRequest("keys must be a list of key patterns")
    return Subscription(scope, parse_patterns(keys), since)


def clamp_timeout(timeout: float | None, maximum: float = MAX_TIMEOUT) -> float:
    """The contract's default (30 s) and clamp (60 s); ``maximum`` is lower where the platform cuts requests
    sooner (API Gateway ends an HTTP API request after 30 s, so Lambda watches hold at most 25 s)."""
    if timeout is None:
        return min(DEFAULT_TIMEOUT, maximum)
    if timeout < 0 or timeout != timeout:
        raise InvalidRequest("timeout must not be negative")
    return min(float(timeout), maximum)


class Watcher:
    """A cursor over the change log for one caller, one scope (and its ancestors) and a set of key patterns."""

    def __init__(
        self,
        service: WatchedService,
        principal: Principal,
        scope: Scope,
        patterns: Sequence[str],
        since: int | None = None,
        *,
        check_retained: bool = True,
    ) -> None:
        self.service = service
        self.principal = principal
        self.scope = scope
        self.matchers = [compile_path(p) for p in patterns]
        self.envs = set(service.env_chain(scope.env))  # unknown env → 404 here, before anything waits
        self.interest = Interest(scope.namespace, self.envs, self.matchers)
        service.feed.start()
        if since is not None and since < 0:
            raise InvalidRequest("since must be 0 or a positive integer")
        self.cursor = service.store.current_revision() if since is None else since
        if check_retained:  # else: a gap in what poll() reads still raises RevisionCompacted
            self.check_retained()

    def check_retained(self) -> None:
        store = self.service.store
        if self.cursor + 1 < store.oldest_retained_revision():
            raise RevisionCompacted("that revision is older than the retained change log; resync", store.current_revision())

    def latest_revision(self) -> int:
        """What a response reports as ``revision``: the cursor, or the store's revision if the caller asked for a
        ``since`` ahead of it (then nothing was skipped and nothing can be: the next call may start there)."""
        return min(self.cursor, self.service.store.current_revision())

    def _visible(self, change: Change) -> bool:
        return self.interest.concerns(change) and self.service.can(self.principal, "read", self.scope, change.key)

    def poll(self) -> list[WatchEvent]:
        """Events after the cursor that this watcher may see; advances the cursor past all it read."""
        feed = self.service.feed
        events: list[WatchEvent] = []
        while True:
            items = feed.after(self.cursor)
            if items is None:
                return self._poll_store()
            if not items:
                return events
            for item in items:
                self.cursor = item.change.revision
                if self._visible(item.change):
                    events.append(WatchEvent(item.change, item.value, item.has_value))
            if events:
                return events

    def _poll_store(self) -> list[WatchEvent]:
        """A cursor older than the feed: read the change log from the store."""
        store = self.service.store
        events: list[WatchEvent] = []
        while True:
            changes = store.changes_since(self.cursor, BATCH)
            if not changes:
                return events
            if changes[0].revision > self.cursor + 1:
                self.check_retained()
            for change in changes:
                self.cursor = change.revision
                if self._visible(change):
                    events.append(self._event(change))
            if events or len(changes) < BATCH:
                return events

    def _event(self, change: Change) -> WatchEvent:
        if change.action is Action.DELETE or change.secret:
            return WatchEvent(change)
        version = self.service.store.get_version(change.scope, change.key, change.version)
        if version is None:
            return WatchEvent(change)
        return WatchEvent(change, self.service.value_of(version), True)


class FeedPoller:
    """Finds commits made by other processes or nodes: while anyone waits, one cheap look at the store's revision
    per ``interval``; when it moved, the feed reads the new changes and the waiters are woken. One per process."""

    def __init__(self, service: WatchedService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        service = self.service
        idle = 0
        while idle < 10:  # stops after a few idle rounds with nobody waiting; the next waiter restarts it
            await asyncio.sleep(self.interval)
            idle = idle + 1 if not service.notifier.waiting else 0
            head = service.feed.head
            try:
                if head is not None and await self._revision() > head and (changes := service.feed.refresh()):
                    service.notifier.notify(changes)
            except TesseraError:
                continue  # the store is unavailable for now: waiters time out and retry

    async def _revision(self) -> int:
        store = self.service.store
        if store.backend_name == "local":
            return store.current_revision()
        return await asyncio.to_thread(store.current_revision)
