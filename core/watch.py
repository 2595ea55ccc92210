"""Watching: a watcher is a revision cursor over the change log (etcd's ``minRev``), filtered per caller.

``Watcher.poll`` reads changes after the cursor, keeps those the caller may see, and advances the cursor
past everything it examined, so nothing is skipped and nothing is delivered twice. Waiting is cheap:
commits on this node wake waiters at once through :class:`ChangeNotifier`; commits made by other nodes
(the aws backend) are found by re-reading the change log every ``poll_interval`` seconds while waiting.

>>> # watcher = Watcher(service, principal, Scope("default", "prod"), ["auth.*"], since=41)
>>> # events = watcher.poll()    # → [WatchEvent(...)], watcher.cursor advanced
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tessera.core.errors import InvalidRequest, RevisionCompacted
from tessera.core.model import Action, Change, Principal, Scope
from tessera.core.policy import compile_path

if TYPE_CHECKING:
    from tessera.core.service import ConfigService

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 60.0
MAX_SUBSCRIPTIONS_PER_SOCKET = 64
POLL_INTERVAL = 0.5
BATCH = 1000


class ChangeNotifier:
    """Wakes asyncio waiters (on any event loop) when this node commits a change.

    ``generation`` counts commits: a waiter passes the generation it saw before it last read the change log,
    so a commit that lands between that read and the wait is not slept through.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.generation = 0

    def notify(self) -> None:
        with self._lock:
            self.generation += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: its waiter is gone
                pass

    async def wait(self, timeout: float, seen_generation: int | None = None) -> None:
        """Return when a change is committed here (or was, since ``seen_generation``), or after ``timeout`` seconds."""
        event = asyncio.Event()
        entry = (asyncio.get_running_loop(), event)
        with self._lock:
            if seen_generation is not None and self.generation != seen_generation:
                return
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)


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
        service: ConfigService,
        principal: Principal,
        scope: Scope,
        patterns: Sequence[str],
        since: int | None = None,
    ) -> None:
        self.service = service
        self.principal = principal
        self.scope = scope
        self.matchers = [compile_path(p) for p in patterns]
        self.envs = set(service.env_chain(scope.env))  # unknown env → 404 here, before anything waits
        if since is not None and since < 0:
            raise InvalidRequest("since must be 0 or a positive integer")
        self.cursor = service.store.current_revision() if since is None else since
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
        return (
            change.scope.namespace == self.scope.namespace
            and change.scope.env in self.envs
            and any(match(change.key) for match in self.matchers)
            and self.service.can(self.principal, "read", self.scope, change.key)
        )

    def poll(self) -> list[WatchEvent]:
        """Events after the cursor that this watcher may see; advances the cursor past all it read."""
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
