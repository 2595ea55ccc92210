"""The Tessera Python SDK: reads and writes with failover between nodes, and ``watch`` that never misses a change.

>>> # client = Tessera(["http://node-a:8200", "http://node-b:8200"], token="tsr_...")
>>> # client.get("database.host")["value"]
>>> # handle = client.watch("database.*", lambda event: print(event["key"], event.get("value")))
>>> # handle.stop()

Nodes are stateless and share one store, so any node can serve any call: on a connection error or a 5xx the
client moves to the next node and retries reads (and writes that carry ``expected_version``, which are safe to
repeat). A watch is a revision cursor: after a failover it resumes from the last revision it delivered, on
whichever node answers, so no change is skipped and none is delivered twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

RETRYABLE_STATUS = {502, 503, 504}
Event = dict[str, Any]


class TesseraError(Exception):
    """An error answer from the server: ``code`` is the contract's stable code."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class NoNodeAvailable(TesseraError):
    def __init__(self, message: str) -> None:
        super().__init__(503, "unavailable", message)


class Tessera:
    def __init__(
        self,
        urls: str | Sequence[str],
        token: str,
        *,
        namespace: str = "default",
        env: str = "default",
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one node URL is needed")
        self.namespace = namespace
        self.env = env
        self._current = 0
        self._lock = threading.Lock()
        self._token = token
        self._timeout = timeout
        self._transport = transport
        self._watches: list[WatchHandle] = []
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {token}"}, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        for handle in self._watches:
            handle.stop(timeout=0)
        self._http.close()

    def _fork(self) -> Tessera:
        """A client of its own for a watch thread, so a long poll never holds up other calls."""
        return Tessera(self.urls, self._token, namespace=self.namespace, env=self.env, timeout=self._timeout,
                       transport=self._transport)

    def __enter__(self) -> Tessera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport with failover
    def request(self, method: str, path: str, *, retry: bool = True, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        """Send to the current node; on a connection error or 502/503/504 try the others (if ``retry``)."""
        attempts = len(self.urls) if retry else 1
        last_error = "no node answered"
        for _ in range(attempts):
            with self._lock:
                index = self._current
            url = self.urls[index] + path
            try:
                response = self._http.request(method, url, timeout=timeout or self._http.timeout, **kwargs)
            except httpx.TransportError as exc:
                last_error = f"{self.urls[index]}: {type(exc).__name__}"
                self._next_node(index)
                continue
            if response.status_code in RETRYABLE_STATUS and retry:
                last_error = f"{self.urls[index]}: HTTP {response.status_code}"
                self._next_node(index)
                continue
            return response
        raise NoNodeAvailable(last_error)

    def _next_node(self, failed: int) -> None:
        with self._lock:
            if self._current == failed:
                self._current = (failed + 1) % len(self.urls)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise TesseraError(response.status_code, "unexpected", response.text[:200]) from None
            raise TesseraError(response.status_code, error.get("code", "unknown"), error.get("message", ""), error)
        return response.json()

    def _scope(self, namespace: str | None, env: str | None, **extra: Any) -> dict[str, Any]:
        params = {"namespace": namespace or self.namespace, "env": env or self.env}
        params.update({k: v for k, v in extra.items() if v is not None})
        return params

    # ------------------------------------------------------------------ config
    def get(self, key: str, *, version: int | None = None, namespace: str | None = None, env: str | None = None) -> dict[str, Any]:
        return self._json(self.request("GET", f"/config/{key}", params=self._scope(namespace, env, version=version)))

    def value(self, key: str, default: Any = None, **scope: Any) -> Any:
        try:
            return self.get(key, **scope)["value"]
        except TesseraError as exc:
            if exc.code == "not_found":
                return default
            raise

    def put(
        self,
        key: str,
        value: Any,
        *,
        secret: bool | None = None,
        expected_version: int | None = None,
        namespace: str | None = None,
        env: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"value": value}
        if secret is not None:
            body["secret"] = secret
        if expected_version is not None:
            body["expected_version"] = expected_version
        # Only a compare-and-set write is safe to send again to another node after an unknown outcome.
        response = self.request(
            "PUT", f"/config/{key}", json=body, params=self._scope(namespace, env), retry=expected_version is not None
        )
        return self._json(response)

    def delete(self, key: str, *, namespace: str | None = None, env: str | None = None) -> dict[str, Any]:
        return self._json(self.request("DELETE", f"/config/{key}", params=self._scope(namespace, env), retry=False))

    def list(self, prefix: str | None = None, *, namespace: str | None = None, env: str | None = None) -> list[dict[str, Any]]:
        return self._json(self.request("GET", "/config", params=self._scope(namespace, env, prefix=prefix)))["keys"]

    def history(self, key: str, *, limit: int | None = None, namespace: str | None = None, env: str | None = None) -> list[dict[str, Any]]:
        params = self._scope(namespace, env, limit=limit)
        return self._json(self.request("GET", f"/config/history/{key}", params=params))["versions"]

    def rollback(self, key: str, version: int, *, namespace: str | None = None, env: str | None = None) -> dict[str, Any]:
        params = self._scope(namespace, env, version=version)
        return self._json(self.request("POST", f"/config/rollback/{key}", params=params, retry=False))

    def export(self, fmt: str = "json", prefix: str | None = None, *, namespace: str | None = None, env: str | None = None) -> str:
        response = self.request("GET", "/config/export", params=self._scope(namespace, env, format=fmt, prefix=prefix))
        if response.status_code >= 400:
            self._json(response)
        return response.text

    def import_values(self, values: dict[str, Any], secrets: Sequence[str] = (), *, namespace: str | None = None, env: str | None = None) -> dict[str, Any]:
        body = {"values": values, "secrets": list(secrets)}
        return self._json(self.request("POST", "/config/import", json=body, params=self._scope(namespace, env), retry=False))

    def health(self) -> dict[str, Any]:
        return self._json(self.request("GET", "/health"))

    # ------------------------------------------------------------------ watching
    def changes(
        self, keys: str | Sequence[str], since: int | None, timeout: float = 30.0, *, namespace: str | None = None, env: str | None = None
    ) -> dict[str, Any]:
        patterns = keys if isinstance(keys, str) else ",".join(keys)
        params = self._scope(namespace, env, keys=patterns, since=since, timeout=timeout)
        return self._json(self.request("GET", "/watch", params=params, timeout=timeout + 10))

    def watch(
        self,
        keys: str | Sequence[str],
        callback: Callable[[Event], None],
        *,
        since: int | None = None,
        namespace: str | None = None,
        env: str | None = None,
        poll_timeout: float = 25.0,
        on_resync: Callable[[int], None] | None = None,
    ) -> WatchHandle:
        """Call ``callback(event)`` for every change to ``keys`` after ``since`` (default: from now), in order.

        Runs in a background thread until ``handle.stop()``. When the server says the cursor is older than
        its retained change log (``410``), ``on_resync(current_revision)`` is called (re-read what you cache)
        and watching continues from the current revision.
        """
        handle = WatchHandle(self._fork(), keys, callback, since, namespace, env, poll_timeout, on_resync)
        handle.start()
        self._watches.append(handle)
        return handle


class WatchHandle:
    def __init__(
        self,
        client: Tessera,
        keys: str | Sequence[str],
        callback: Callable[[Event], None],
        since: int | None,
        namespace: str | None,
        env: str | None,
        poll_timeout: float,
        on_resync: Callable[[int], None] | None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.callback = callback
        self.cursor = since
        self.namespace = namespace
        self.env = env
        self.poll_timeout = poll_timeout
        self.on_resync = on_resync
        self.errors: list[TesseraError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tessera-watch", daemon=True)

    def start(self) -> None:
        if self.cursor is None:
            # Pin the cursor now, so changes made right after watch() returns are delivered.
            self.cursor = self.client.health()["revision"]
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; closing the watch's own connection ends a long poll in flight."""
        self._stop.set()
        self.client.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                body = self.client.changes(self.keys, self.cursor, self.poll_timeout, namespace=self.namespace, env=self.env)
            except (RuntimeError, httpx.HTTPError):
                if self._stop.is_set():
                    return  # the connection was closed by stop()
                raise
            except TesseraError as exc:
                if exc.code == "revision_compacted":
                    current = int(exc.body.get("current_revision", 0))
                    self.cursor = current
                    if self.on_resync:
                        self.on_resync(current)
                    continue
                self.errors.append(exc)
                if exc.status in (401, 403, 404) or exc.status == 400:
                    return  # nothing will change by retrying
                self._stop.wait(backoff + random.uniform(0, backoff))
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for event in body["events"]:
                if self.cursor is not None and event["revision"] <= self.cursor:
                    continue  # already delivered (never twice, even across a failover)
                self.cursor = event["revision"]
                try:
                    self.callback(event)
                except Exception as exc:  # a failing callback must not end the watch; it is recorded
                    self.errors.append(TesseraError(0, "callback_failed", type(exc).__name__))
            self.cursor = max(self.cursor or 0, body["revision"])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (a helper for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
