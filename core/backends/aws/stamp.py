"""The auth stamp: one small item every change to tokens, policies or meta moves, so a node may answer token,
policy and root-digest lookups from memory as long as the stamp has not moved.

    AUTHSTAMP   stamp   ``v``: a counter, ``ADD``-ed by one in the same transaction as each change

A node reads the stamp (one strongly consistent ``GetItem`` of a few bytes) at most every ``max_age`` seconds
and drops every cached lookup when it moved. So a warm request with a service token reads at most this one
item besides the head, a revocation on any node is seen by every node within ``max_age`` (plus the request
path's own cache, ``core/auth.py``: together under a second), and a node that changes something drops its own
caches at once.

>>> # stamp = AuthStamp(table)
>>> # cache = stamp.cache("tokens"); cache.get(digest, lambda: table.get("TOKENHASH", digest))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from tessera.core.backends.aws.calls import Table
from tessera.core.backends.aws.items import get_n, n, s

STAMP_PK, STAMP_SK = "AUTHSTAMP", "stamp"
STAMP_SECONDS = 0.5
CACHE_ENTRIES = 10_000
T = TypeVar("T")
_MISSING = object()


class StampedCache(Generic[T]):
    """Lookups kept while the stamp stays put (bounded: cleared when full)."""

    def __init__(self, stamp: AuthStamp) -> None:
        self.stamp = stamp
        self._entries: dict[Any, T] = {}

    def get(self, key: Any, load: Callable[[], T]) -> T:
        self.stamp.check()
        hit = self._entries.get(key, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        generation = self.stamp.generation
        value = load()
        if generation == self.stamp.generation:  # not filled across a change seen meanwhile
            if len(self._entries) >= CACHE_ENTRIES:
                self._entries.clear()
            self._entries[key] = value
        return value

    def clear(self) -> None:
        self._entries.clear()


class AuthStamp:
    def __init__(self, db: Table, max_age: float = STAMP_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.max_age = max_age
        self.clock = clock
        self.generation = 0  # moves whenever the caches are dropped
        self._value: int | None = None
        self._read_at = float("-inf")
        self._caches: list[StampedCache[Any]] = []
        self._lock = threading.Lock()

    def cache(self) -> StampedCache[Any]:
        cache: StampedCache[Any] = StampedCache(self)
        self._caches.append(cache)
        return cache

    def check(self) -> None:
        """Read the stamp if the last read is older than ``max_age``; drop every cache if it moved."""
        if self.clock() - self._read_at < self.max_age:
            return
        with self._lock:
            now = self.clock()
            if now - self._read_at < self.max_age:
                return
            item = self.db.get(STAMP_PK, STAMP_SK)
            value = (get_n(item, "v") or 0) if item is not None else 0
            if value != self._value:
                self._drop()
                self._value = value
            self._read_at = now

    def changed(self) -> None:
        """This node just changed something: drop its caches now and read the stamp again next time."""
        with self._lock:
            self._drop()
            self._read_at = float("-inf")

    def _drop(self) -> None:
        self.generation += 1
        for cache in self._caches:
            cache.clear()

    def bump(self) -> dict[str, Any]:
        """The ``Update`` of the stamp to put in a change's transaction."""
        return {
            "Update": {
                "TableName": self.db.name,
                "Key": {"PK": s(STAMP_PK), "SK": s(STAMP_SK)},
                "UpdateExpression": "ADD v :one",
                "ExpressionAttributeValues": {":one": n(1)},
            }
        }
