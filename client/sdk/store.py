"""The client's memory of values: a short read cache, the last-known-good store, and single-flight reads.

Last-known-good (LKG): every successful latest-version read is remembered; when a read finds no node answering
(``Unavailable``), the remembered entry is served with ``stale=True``. It lives in memory, and, when the app
passes a path, in a JSON file too (mode ``0600``, written atomically), so a restarted app can start during an
outage.

Secrets never go to the file; they are kept in memory only. Why excluded rather than encrypted: a key to
encrypt the file would have to sit where the same app (and so the same attacker) can read it, next to the file
or in its environment, so encryption would add key handling without adding protection; and a secret written to
disk outlives rotation and revocation in ways Tessera cannot see or audit. Subtrees are not written either (their
values may hold secret leaves). An app that must start with secrets during an outage needs a secret store of its
own; one that stays up keeps serving them from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from cachetools import TTLCache

from tessera.client.sdk.types import Entry

logger = logging.getLogger("tessera.client")
T = TypeVar("T")
FILE_FORMAT = 1
ScopeKey = tuple[str, str, str]  # (namespace, env, key)


def _related(a: str, b: str) -> bool:
    """Whether a write to one key can change a read of the other: the same key, or one below the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


class ReadCache:
    """A short-lived cache of latest-version reads (off unless ``cache_ttl`` > 0): an entry lives ``ttl`` seconds
    from the read that made it, at most ``max_entries`` of them (least recently used out first).

    cachetools is not thread-safe: every use holds the lock.
    """

    def __init__(self, ttl: float, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: TTLCache[ScopeKey, Entry] = TTLCache(max_entries, max(ttl, 0.0), timer=time.monotonic)
        self._lock = threading.Lock()

    def get(self, scope_key: ScopeKey) -> Entry | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            return self._entries.get(scope_key)

    def put(self, scope_key: ScopeKey, entry: Entry) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[scope_key] = entry

    def invalidate(self, namespace: str, key: str) -> None:
        """Drop every cached read this write may change (any env: children inherit from their parents)."""
        with self._lock:
            for cached in [k for k in self._entries if k[0] == namespace and _related(k[2], key)]:
                self._entries.pop(cached, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class LastKnownGood:
    """Latest values read successfully, served stale when every node is down (see the module docstring).

    >>> lkg = LastKnownGood()
    >>> lkg.remember(Entry(key="a", value=1, version=1))
    >>> lkg.get("default", "default", "a")
    Entry(key='a', value=1, version=1, secret=False, stale=True, namespace='default', env='default')
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[ScopeKey, Entry] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        if self.path is not None:
            self._load(self.path)

    def get(self, namespace: str, env: str, key: str) -> Entry | None:
        """The remembered entry, marked ``stale=True``; ``None`` when nothing was remembered."""
        with self._lock:
            found = self._entries.get((namespace, env, key))
        return found.as_stale() if found else None

    def remember(self, entry: Entry) -> None:
        scope_key = (entry.namespace, entry.env, entry.key)
        with self._lock:
            before = self._entries.get(scope_key)
            self._entries[scope_key] = entry
        if self.path is not None and self._persisted(entry) and (before is None or before != entry):
            self._save()

    def forget(self, namespace: str, env: str, key: str) -> None:
        """The server says the key is gone (``404``): an outage must not bring it back."""
        with self._lock:
            removed = self._entries.pop((namespace, env, key), None)
        if removed is not None and self.path is not None and self._persisted(removed):
            self._save()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _persisted(entry: Entry) -> bool:
        return not entry.secret and not entry.is_subtree

    def _save(self) -> None:
        assert self.path is not None
        with self._lock:
            entries = [e.to_json() for e in self._entries.values() if self._persisted(e)]
        document = json.dumps({"format": FILE_FORMAT, "entries": entries}, separators=(",", ":")).encode()
        # Written whole to a temporary file created 0600, flushed, then renamed over the old one: a reader (or a
        # crash) sees the old file or the new one, never half of one, and never a wider mode.
        with self._write_lock:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.fchmod(fd, 0o600)
                    os.write(fd, document)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except OSError as exc:
                logger.warning("cannot write the last-known-good file %s: %s", self.path, exc.strerror or exc)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_bytes())
            items = document["entries"] if document.get("format") == FILE_FORMAT else []
            for item in items:
                entry = Entry._from_body(item)
                if self._persisted(entry):
                    self._entries[(entry.namespace, entry.env, entry.key)] = entry
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged file must not stop the app: it starts with an empty store and says so.
            logger.warning("ignoring the unreadable last-known-good file %s (%s)", path, type(exc).__name__)


class SingleFlight:
    """Concurrent identical reads share one request: the first caller fetches, the others wait for its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Future[Any]] = {}

    def do(self, key: Hashable, fetch: Callable[[], T]) -> T:
        with self._lock:
            future = self._calls.get(key)
            leader = future is None
            if future is None:
                future = self._calls[key] = Future()
        if not leader:
            shared: T = future.result()
            return shared
        try:
            result = fetch()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                del self._calls[key]


class AsyncSingleFlight:
    """The asyncio form: one task per key; a caller that is cancelled does not cancel the others' fetch."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[Any]] = {}

    async def do(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._calls[key] = task

            def done(finished: asyncio.Task[Any], key: Hashable = key) -> None:
                if self._calls.get(key) is finished:
                    del self._calls[key]
                if not finished.cancelled():
                    finished.exception()  # retrieved: no "exception was never retrieved" when every waiter left

            task.add_done_callback(done)
        return await asyncio.shield(task)
